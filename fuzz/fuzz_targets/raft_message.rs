//! Raft traffic from a peer is untrusted bytes: the envelope and every kind of payload either decode
//! or are refused with an error, never a panic, an abort or an unbounded allocation.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let _ = cairn_cluster::raft::decode_call(bytes);
});
