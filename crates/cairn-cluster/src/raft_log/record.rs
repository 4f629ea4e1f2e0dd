//! The node Raft log's records: their encoding (the payloads of framed records; byte layouts in
//! `docs/format.md` "Raft log") and decoding.

use super::{GroupId, LogEntry, LogPosition, Mark};
use cairn_engine::coding::{get_bytes, get_varint, put_bytes, put_varint};
use cairn_engine::log::LogWriter;
use std::collections::HashMap;

const TAG_APPEND: u8 = 1;
const TAG_VOTE: u8 = 2;
const TAG_TRUNCATE: u8 = 3;
const TAG_PURGE: u8 = 4;
const TAG_CHECKPOINT: u8 = 5;

/// `payload` framed as the segment files hold it (the engine's log record framing).
pub(super) fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 12);
    LogWriter::encode_record(&mut out, payload);
    out
}

/// A `Checkpoint`: the valid length of the segment before, and every group's vote and purge point.
pub(super) fn encode_checkpoint(prev_len: u64, marks: &HashMap<GroupId, Mark>) -> Vec<u8> {
    let mut out = vec![TAG_CHECKPOINT];
    put_varint(&mut out, prev_len);
    put_varint(&mut out, marks.len() as u64);
    let mut ids: Vec<_> = marks.keys().copied().collect();
    ids.sort_unstable();
    for id in ids {
        let (vote, purged) = &marks[&id];
        put_varint(&mut out, id);
        match vote {
            Some(v) => {
                out.push(1);
                put_bytes(&mut out, v);
            }
            None => out.push(0),
        }
        match purged {
            Some(p) => {
                out.push(1);
                put_varint(&mut out, p.index);
                put_varint(&mut out, p.term);
            }
            None => out.push(0),
        }
    }
    out
}

/// A decoded record.
pub(super) enum Record {
    Append(GroupId, Vec<LogEntry>),
    Vote(GroupId, Vec<u8>),
    Truncate(GroupId, Option<u64>),
    Purge(GroupId, LogPosition),
    Checkpoint { prev_len: u64, marks: Vec<(GroupId, Mark)> },
}

/// Decodes one record.
pub(super) fn decode(payload: &[u8]) -> Result<Record, String> {
    let (&tag, mut rest) = payload.split_first().ok_or("empty record")?;
    let p = &mut rest;
    let varint = |p: &mut &[u8]| get_varint(p).ok_or_else(|| "truncated record".to_string());
    let bytes =
        |p: &mut &[u8]| get_bytes(p).map(<[u8]>::to_vec).ok_or_else(|| "truncated record".to_string());
    let flag = |p: &mut &[u8]| -> Result<bool, String> {
        let (&b, tail) = p.split_first().ok_or("truncated record")?;
        *p = tail;
        match b {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(format!("bad flag byte {b}")),
        }
    };
    let record = match tag {
        TAG_APPEND => {
            let group = varint(p)?;
            let n = varint(p)?;
            let mut entries = Vec::new();
            for _ in 0..n {
                let (index, term) = (varint(p)?, varint(p)?);
                entries.push(LogEntry { index, term, payload: bytes(p)? });
            }
            Record::Append(group, entries)
        }
        TAG_VOTE => Record::Vote(varint(p)?, bytes(p)?),
        TAG_TRUNCATE => {
            let group = varint(p)?;
            Record::Truncate(group, if flag(p)? { Some(varint(p)?) } else { None })
        }
        TAG_PURGE => {
            let group = varint(p)?;
            let (index, term) = (varint(p)?, varint(p)?);
            Record::Purge(group, LogPosition { term, index })
        }
        TAG_CHECKPOINT => {
            let prev_len = varint(p)?;
            let n = varint(p)?;
            let mut marks = Vec::new();
            for _ in 0..n {
                let group = varint(p)?;
                let vote = if flag(p)? { Some(bytes(p)?) } else { None };
                let purged = if flag(p)? {
                    let (index, term) = (varint(p)?, varint(p)?);
                    Some(LogPosition { term, index })
                } else {
                    None
                };
                marks.push((group, (vote, purged)));
            }
            Record::Checkpoint { prev_len, marks }
        }
        other => return Err(format!("unknown record tag {other}")),
    };
    if !p.is_empty() {
        return Err("trailing bytes in record".into());
    }
    Ok(record)
}

/// An `Append` of `group`'s `entries`.
pub(super) fn encode_append(group: GroupId, entries: &[LogEntry]) -> Vec<u8> {
    let mut out = vec![TAG_APPEND];
    put_varint(&mut out, group);
    put_varint(&mut out, entries.len() as u64);
    for e in entries {
        put_varint(&mut out, e.index);
        put_varint(&mut out, e.term);
        put_bytes(&mut out, &e.payload);
    }
    out
}

/// A `Vote` of `group`.
pub(super) fn encode_vote(group: GroupId, vote: &[u8]) -> Vec<u8> {
    let mut out = vec![TAG_VOTE];
    put_varint(&mut out, group);
    put_bytes(&mut out, vote);
    out
}

/// A `Truncate` of `group`'s entries after `after` (all of them for `None`).
pub(super) fn encode_truncate(group: GroupId, after: Option<u64>) -> Vec<u8> {
    let mut out = vec![TAG_TRUNCATE];
    put_varint(&mut out, group);
    match after {
        Some(i) => {
            out.push(1);
            put_varint(&mut out, i);
        }
        None => out.push(0),
    }
    out
}

/// A `Purge` of `group`'s entries up to `upto`.
pub(super) fn encode_purge(group: GroupId, upto: LogPosition) -> Vec<u8> {
    let mut out = vec![TAG_PURGE];
    put_varint(&mut out, group);
    put_varint(&mut out, upto.index);
    put_varint(&mut out, upto.term);
    out
}
