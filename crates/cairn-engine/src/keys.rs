//! Internal keys. Every stored entry is keyed by
//!
//! ```text
//! user key = bucket (u16, big-endian) ++ key bytes
//! internal key = user key ++ trailer (u64 little-endian: sequence << 8 | kind)
//! ```
//!
//! Because the bucket leads the user key, a bucket range is a user-key range. Internal keys order by user
//! key ascending, then by trailer descending, so the newest version of a key comes first.

use std::cmp::Ordering;

/// Bytes in an internal key's trailer.
pub const TRAILER_BYTES: usize = 8;
/// Bytes in the bucket prefix of a user key.
pub const BUCKET_BYTES: usize = 2;
/// The largest sequence number: sequence numbers take 56 bits of the trailer.
pub const MAX_SEQUENCE: u64 = (1 << 56) - 1;
/// The longest key a caller may store (bucket and trailer excluded).
pub const MAX_KEY_BYTES: usize = 64 * 1024;

/// What an entry does to its row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    /// Removes the whole row; older versions are hidden.
    Delete = 0,
    /// A complete row; older versions are hidden.
    Set = 1,
    /// A partial row (some columns set or deleted) layered on older versions.
    Merge = 2,
}

impl Kind {
    /// Decodes a kind byte; `None` for an unknown one (a corrupt entry).
    pub fn from_u8(b: u8) -> Option<Kind> {
        match b {
            0 => Some(Kind::Delete),
            1 => Some(Kind::Set),
            2 => Some(Kind::Merge),
            _ => None,
        }
    }

    /// The largest kind value: a lookup key with it sorts before every entry of the same sequence.
    pub const MAX: Kind = Kind::Merge;
}

/// Packs a sequence number and kind into a trailer.
pub fn pack_trailer(seq: u64, kind: Kind) -> u64 {
    debug_assert!(seq <= MAX_SEQUENCE);
    (seq << 8) | kind as u64
}

/// Builds the user key for `key` in `bucket`.
pub fn user_key(bucket: u16, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(BUCKET_BYTES + key.len());
    out.extend_from_slice(&bucket.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// Appends an internal key to `out`.
pub fn append_internal_key(out: &mut Vec<u8>, user_key: &[u8], seq: u64, kind: Kind) {
    out.extend_from_slice(user_key);
    out.extend_from_slice(&pack_trailer(seq, kind).to_le_bytes());
}

/// Builds an internal key.
pub fn internal_key(user_key: &[u8], seq: u64, kind: Kind) -> Vec<u8> {
    let mut out = Vec::with_capacity(user_key.len() + TRAILER_BYTES);
    append_internal_key(&mut out, user_key, seq, kind);
    out
}

/// The key to seek to for reading `user_key` as of `seq`: it sorts before every version visible at `seq`.
pub fn lookup_key(user_key: &[u8], seq: u64) -> Vec<u8> {
    internal_key(user_key, seq, Kind::MAX)
}

/// The user-key part of an internal key. Callers only pass keys that passed [`is_valid_internal_key`].
pub fn user_key_of(ikey: &[u8]) -> &[u8] {
    &ikey[..ikey.len().saturating_sub(TRAILER_BYTES)]
}

/// The trailer of an internal key.
pub fn trailer_of(ikey: &[u8]) -> u64 {
    let n = ikey.len();
    if n < TRAILER_BYTES {
        return 0;
    }
    let mut t = [0u8; TRAILER_BYTES];
    t.copy_from_slice(&ikey[n - TRAILER_BYTES..]);
    u64::from_le_bytes(t)
}

/// The sequence number of an internal key.
pub fn seq_of(ikey: &[u8]) -> u64 {
    trailer_of(ikey) >> 8
}

/// The kind of an internal key, `None` if its kind byte is unknown.
pub fn kind_of(ikey: &[u8]) -> Option<Kind> {
    Kind::from_u8((trailer_of(ikey) & 0xff) as u8)
}

/// The bucket of a user key (its first two bytes).
pub fn bucket_of(user_key: &[u8]) -> u16 {
    match user_key {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 0,
    }
}

/// Word `i` (bytes `8i..8i+8`) of `user_key` read big-endian, zero-padded past the key's end.
///
/// Comparing a key's leading words orders keys as comparing their bytes does whenever the words differ:
/// padding zeros sort first, as a key sorts before its extensions. Equal words decide nothing (`a` and
/// `a\0` pad alike), so callers fall back to the bytes.
pub fn head_word(user_key: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    let start = (8 * i).min(user_key.len());
    let end = (8 * i + 8).min(user_key.len());
    w[..end - start].copy_from_slice(&user_key[start..end]);
    u64::from_be_bytes(w)
}

/// True if `ikey` is long enough to hold a bucket and a trailer and has a known kind.
pub fn is_valid_internal_key(ikey: &[u8]) -> bool {
    ikey.len() >= BUCKET_BYTES + TRAILER_BYTES && kind_of(ikey).is_some()
}

/// Orders internal keys: user key ascending, then trailer descending (newest first).
pub fn cmp_internal(a: &[u8], b: &[u8]) -> Ordering {
    match user_key_of(a).cmp(user_key_of(b)) {
        Ordering::Equal => trailer_of(b).cmp(&trailer_of(a)),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_words_order_like_the_bytes_when_they_differ() {
        let ks: [&[u8]; 8] = [b"", b"\0", b"a", b"a\0", b"ab", b"abcdefgh", b"abcdefgh\x01", b"abcdefgi"];
        for a in ks {
            for b in ks {
                let (ha, hb) = ((head_word(a, 0), head_word(a, 1)), (head_word(b, 0), head_word(b, 1)));
                if ha != hb {
                    assert_eq!(ha.cmp(&hb), a.cmp(b), "{a:?} vs {b:?}");
                }
            }
        }
        assert_eq!(head_word(b"abcdefghij", 1), u64::from_be_bytes(*b"ij\0\0\0\0\0\0"));
    }

    #[test]
    fn newest_version_sorts_first() {
        let uk = user_key(7, b"k");
        let old = internal_key(&uk, 5, Kind::Set);
        let new = internal_key(&uk, 9, Kind::Delete);
        assert_eq!(cmp_internal(&new, &old), Ordering::Less);
        assert_eq!(cmp_internal(&lookup_key(&uk, 9), &new), Ordering::Less);
        assert_eq!(cmp_internal(&lookup_key(&uk, 8), &new), Ordering::Greater);
        assert_eq!(cmp_internal(&lookup_key(&uk, 8), &old), Ordering::Less);
    }

    #[test]
    fn user_key_prefix_sorts_before_longer_key() {
        let a = internal_key(&user_key(1, b"a"), 1, Kind::Set);
        let ab = internal_key(&user_key(1, b"ab"), 100, Kind::Set);
        assert_eq!(cmp_internal(&a, &ab), Ordering::Less);
        let b0 = internal_key(&user_key(0, b"zzz"), 1, Kind::Set);
        assert_eq!(cmp_internal(&b0, &a), Ordering::Less);
    }

    #[test]
    fn trailer_round_trips() {
        let ik = internal_key(&user_key(513, b"xyz"), 12345, Kind::Merge);
        assert_eq!(seq_of(&ik), 12345);
        assert_eq!(kind_of(&ik), Some(Kind::Merge));
        assert_eq!(bucket_of(user_key_of(&ik)), 513);
        assert!(is_valid_internal_key(&ik));
    }
}
