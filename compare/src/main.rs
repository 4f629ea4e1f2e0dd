//! cairn-compare: runs `cairn-bench engine`'s workloads against cairn-engine and other engines in one
//! process and prints a ratio table. The other engines' adapters arrive with the engine benchmark work
//! (issue 3); until then this binary only says so.

fn main() {
    eprintln!("cairn-compare: engine adapters (RocksDB, fjall, cobble) are not written yet");
    std::process::exit(2);
}
