//! Version edits: the records of the manifest. Each edit is a set of tagged fields; replaying the edits
//! in order rebuilds the current version.
//!
//! ```text
//! edit  = field*
//! field = varint tag, body
//!   1 log_number        varint
//!   2 next_file_number  varint
//!   3 last_sequence     varint
//!   4 deleted file      varint level, varint number
//!   5 added file        varint level, varint number, varint size, bytes smallest, bytes largest,
//!                       varint min_seq, varint max_seq, varint entries, varint deletions
//!   6 owned buckets     varint count, count × (varint start, varint end)
//!   7 total_buckets     varint
//!   8 db_id             bytes (the shard's identity, set when it is created)
//!   9 next_snapshot_id  varint
//!  10 snapshot          varint snapshot_id, varint created_at_ms (only in a shard snapshot's manifest)
//!  11 restored_from     bytes db_id, varint snapshot_id (a shard opened from another's snapshot)
//!  12 file filter       varint number, varint count, count × (varint start, varint end): only these
//!                       buckets of file `number` are visible (set by a shrink or an import; cleared by
//!                       count 0)
//!  13 last release      varint snapshot_id, varint count, count × (varint start, varint end): the
//!                       latest shrink (its pre-shrink snapshot and the ranges it released)
//! ```

use crate::bucket::BucketRange;
use crate::coding::{get_bytes, get_varint, put_bytes, put_varint};
use crate::config::NUM_LEVELS;

/// What the manifest records about one SST file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMeta {
    /// File number; the file is `{number:06}.sst`.
    pub number: u64,
    /// Size in bytes.
    pub size: u64,
    /// Smallest internal key.
    pub smallest: Vec<u8>,
    /// Largest internal key.
    pub largest: Vec<u8>,
    /// Smallest sequence number inside.
    pub min_seq: u64,
    /// Largest sequence number inside.
    pub max_seq: u64,
    /// Entries.
    pub entries: u64,
    /// Row tombstones among the entries.
    pub deletions: u64,
}

impl FileMeta {
    /// The manifest's record of a freshly written table.
    pub fn of_table(number: u64, size: u64, props: crate::sst::TableProperties) -> FileMeta {
        FileMeta {
            number,
            size,
            smallest: props.smallest_key,
            largest: props.largest_key,
            min_seq: props.min_seq,
            max_seq: props.max_seq,
            entries: props.num_entries,
            deletions: props.num_deletions,
        }
    }
}

/// One manifest record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionEdit {
    /// WAL files below this number are fully flushed.
    pub log_number: Option<u64>,
    /// Every file number in use is below this.
    pub next_file_number: Option<u64>,
    /// Largest sequence number stored in SST files.
    pub last_sequence: Option<u64>,
    /// Files removed: (level, number).
    pub deleted: Vec<(usize, u64)>,
    /// Files added: (level, meta).
    pub added: Vec<(usize, FileMeta)>,
    /// The shard's bucket ownership, when it changes.
    pub owned_buckets: Option<Vec<BucketRange>>,
    /// The bucket space size, recorded when the shard is created.
    pub total_buckets: Option<u32>,
    /// The shard's identity, recorded when it is created.
    pub db_id: Option<String>,
    /// Every snapshot id this shard handed out is below this.
    pub next_snapshot_id: Option<u64>,
    /// Set in the manifest of a shard snapshot: its id and creation time (ms since the Unix epoch).
    pub snapshot: Option<(u64, u64)>,
    /// The shard snapshot (db_id, snapshot_id) this shard was restored from.
    pub restored_from: Option<(String, u64)>,
    /// Bucket filters set on files (by number): only the listed buckets of the file are visible. An
    /// empty list clears the filter. Applied after the edit's deletions and additions.
    pub filters: Vec<(u64, Vec<BucketRange>)>,
    /// The latest shrink: its pre-shrink snapshot id and the ranges it released.
    pub last_release: Option<(u64, Vec<BucketRange>)>,
}

const TAG_LOG_NUMBER: u64 = 1;
const TAG_NEXT_FILE: u64 = 2;
const TAG_LAST_SEQ: u64 = 3;
const TAG_DELETED: u64 = 4;
const TAG_ADDED: u64 = 5;
const TAG_OWNED: u64 = 6;
const TAG_TOTAL_BUCKETS: u64 = 7;
const TAG_DB_ID: u64 = 8;
const TAG_NEXT_SNAPSHOT: u64 = 9;
const TAG_SNAPSHOT: u64 = 10;
const TAG_RESTORED_FROM: u64 = 11;
const TAG_FILTER: u64 = 12;
const TAG_LAST_RELEASE: u64 = 13;

fn put_ranges(out: &mut Vec<u8>, ranges: &[BucketRange]) {
    put_varint(out, ranges.len() as u64);
    for r in ranges {
        put_varint(out, u64::from(*r.start()));
        put_varint(out, u64::from(*r.end()));
    }
}

fn get_ranges(buf: &mut &[u8], what: &str) -> Result<Vec<BucketRange>, String> {
    let trunc = || format!("version edit truncated in {what}");
    let count = get_varint(buf).ok_or_else(trunc)?;
    if count > buf.len() as u64 {
        return Err(format!("{what} bucket count {count} exceeds the record"));
    }
    let mut ranges = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let s = get_varint(buf).ok_or_else(trunc)?;
        let e = get_varint(buf).ok_or_else(trunc)?;
        match (u16::try_from(s), u16::try_from(e)) {
            (Ok(s), Ok(e)) if s <= e => ranges.push(s..=e),
            _ => return Err(format!("{what} bucket range out of bounds")),
        }
    }
    Ok(ranges)
}

impl VersionEdit {
    /// Encodes the edit.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut field = |tag: u64, v: Option<u64>| {
            if let Some(v) = v {
                put_varint(&mut out, tag);
                put_varint(&mut out, v);
            }
        };
        field(TAG_LOG_NUMBER, self.log_number);
        field(TAG_NEXT_FILE, self.next_file_number);
        field(TAG_LAST_SEQ, self.last_sequence);
        field(TAG_TOTAL_BUCKETS, self.total_buckets.map(u64::from));
        field(TAG_NEXT_SNAPSHOT, self.next_snapshot_id);
        if let Some(id) = &self.db_id {
            put_varint(&mut out, TAG_DB_ID);
            put_bytes(&mut out, id.as_bytes());
        }
        if let Some((id, created)) = self.snapshot {
            put_varint(&mut out, TAG_SNAPSHOT);
            put_varint(&mut out, id);
            put_varint(&mut out, created);
        }
        if let Some((db, id)) = &self.restored_from {
            put_varint(&mut out, TAG_RESTORED_FROM);
            put_bytes(&mut out, db.as_bytes());
            put_varint(&mut out, *id);
        }
        for (level, number) in &self.deleted {
            put_varint(&mut out, TAG_DELETED);
            put_varint(&mut out, *level as u64);
            put_varint(&mut out, *number);
        }
        for (level, f) in &self.added {
            put_varint(&mut out, TAG_ADDED);
            put_varint(&mut out, *level as u64);
            put_varint(&mut out, f.number);
            put_varint(&mut out, f.size);
            put_bytes(&mut out, &f.smallest);
            put_bytes(&mut out, &f.largest);
            for v in [f.min_seq, f.max_seq, f.entries, f.deletions] {
                put_varint(&mut out, v);
            }
        }
        if let Some(ranges) = &self.owned_buckets {
            put_varint(&mut out, TAG_OWNED);
            put_ranges(&mut out, ranges);
        }
        if let Some((snapshot_id, ranges)) = &self.last_release {
            put_varint(&mut out, TAG_LAST_RELEASE);
            put_varint(&mut out, *snapshot_id);
            put_ranges(&mut out, ranges);
        }
        for (number, ranges) in &self.filters {
            put_varint(&mut out, TAG_FILTER);
            put_varint(&mut out, *number);
            put_ranges(&mut out, ranges);
        }
        out
    }

    /// Decodes an edit; the error is a description for a `Corruption` report.
    pub fn decode(mut buf: &[u8]) -> Result<VersionEdit, String> {
        let mut edit = VersionEdit::default();
        let trunc = |what: &str| format!("version edit truncated in {what}");
        while !buf.is_empty() {
            let tag = get_varint(&mut buf).ok_or_else(|| trunc("tag"))?;
            match tag {
                TAG_LOG_NUMBER => edit.log_number = Some(get_varint(&mut buf).ok_or_else(|| trunc("log"))?),
                TAG_NEXT_FILE => {
                    edit.next_file_number = Some(get_varint(&mut buf).ok_or_else(|| trunc("next"))?)
                }
                TAG_LAST_SEQ => edit.last_sequence = Some(get_varint(&mut buf).ok_or_else(|| trunc("seq"))?),
                TAG_TOTAL_BUCKETS => {
                    let n = get_varint(&mut buf).ok_or_else(|| trunc("total_buckets"))?;
                    edit.total_buckets = Some(u32::try_from(n).map_err(|_| format!("total_buckets {n}"))?);
                }
                TAG_NEXT_SNAPSHOT => {
                    edit.next_snapshot_id = Some(get_varint(&mut buf).ok_or_else(|| trunc("next snapshot"))?)
                }
                TAG_DB_ID => edit.db_id = Some(get_string(&mut buf, "db_id")?),
                TAG_SNAPSHOT => {
                    let id = get_varint(&mut buf).ok_or_else(|| trunc("snapshot"))?;
                    let created = get_varint(&mut buf).ok_or_else(|| trunc("snapshot"))?;
                    edit.snapshot = Some((id, created));
                }
                TAG_RESTORED_FROM => {
                    let db = get_string(&mut buf, "restored_from")?;
                    let id = get_varint(&mut buf).ok_or_else(|| trunc("restored_from"))?;
                    edit.restored_from = Some((db, id));
                }
                TAG_DELETED => {
                    let level = get_level(&mut buf)?;
                    let number = get_varint(&mut buf).ok_or_else(|| trunc("deleted file"))?;
                    edit.deleted.push((level, number));
                }
                TAG_ADDED => {
                    let level = get_level(&mut buf)?;
                    let mut v = || get_varint(&mut buf).ok_or_else(|| trunc("added file"));
                    let (number, size) = (v()?, v()?);
                    let smallest = get_bytes(&mut buf).ok_or_else(|| trunc("smallest"))?.to_vec();
                    let largest = get_bytes(&mut buf).ok_or_else(|| trunc("largest"))?.to_vec();
                    let mut v = || get_varint(&mut buf).ok_or_else(|| trunc("added file"));
                    let (min_seq, max_seq, entries, deletions) = (v()?, v()?, v()?, v()?);
                    let meta =
                        FileMeta { number, size, smallest, largest, min_seq, max_seq, entries, deletions };
                    edit.added.push((level, meta));
                }
                TAG_OWNED => edit.owned_buckets = Some(get_ranges(&mut buf, "owned")?),
                TAG_LAST_RELEASE => {
                    let snapshot_id = get_varint(&mut buf).ok_or_else(|| trunc("last release"))?;
                    edit.last_release = Some((snapshot_id, get_ranges(&mut buf, "last release")?));
                }
                TAG_FILTER => {
                    let number = get_varint(&mut buf).ok_or_else(|| trunc("filter"))?;
                    edit.filters.push((number, get_ranges(&mut buf, "filter")?));
                }
                other => return Err(format!("unknown version edit tag {other}")),
            }
        }
        Ok(edit)
    }
}

fn get_string(buf: &mut &[u8], what: &str) -> Result<String, String> {
    let bytes = get_bytes(buf).ok_or_else(|| format!("version edit truncated in {what}"))?;
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
}

fn get_level(buf: &mut &[u8]) -> Result<usize, String> {
    let level = get_varint(buf).ok_or("version edit truncated in level")?;
    if level as usize >= NUM_LEVELS {
        return Err(format!("level {level} out of range"));
    }
    Ok(level as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_round_trips() {
        let edit = VersionEdit {
            log_number: Some(7),
            next_file_number: Some(12),
            last_sequence: Some(999),
            deleted: vec![(0, 3), (1, 4)],
            added: vec![(
                2,
                FileMeta {
                    number: 11,
                    size: 4096,
                    smallest: b"aaaaaaaaaaaa".to_vec(),
                    largest: b"zzzzzzzzzzzz".to_vec(),
                    min_seq: 1,
                    max_seq: 900,
                    entries: 10,
                    deletions: 2,
                },
            )],
            owned_buckets: Some(vec![0..=10, 20..=30]),
            total_buckets: Some(1024),
            db_id: Some("4f2a".into()),
            next_snapshot_id: Some(5),
            snapshot: Some((4, 1_700_000_000_000)),
            restored_from: Some(("9c1b".into(), 2)),
            filters: vec![(11, vec![3..=4, 9..=9]), (12, vec![])],
            last_release: Some((3, vec![100..=200])),
        };
        assert_eq!(VersionEdit::decode(&edit.encode()).unwrap(), edit);
    }

    #[test]
    fn truncated_edits_are_errors() {
        let edit = VersionEdit { log_number: Some(300), deleted: vec![(1, 77)], ..Default::default() };
        let enc = edit.encode();
        // Bytes 0..3 hold the log number field; a cut inside any field must be an error. (A cut between
        // fields decodes to fewer fields; the manifest's record checksums catch that.)
        for cut in (1..3).chain(4..enc.len()) {
            assert!(VersionEdit::decode(&enc[..cut]).is_err(), "cut {cut}");
        }
    }
}
