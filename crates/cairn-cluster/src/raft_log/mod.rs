//! The node's Raft log: one append-only log shared by every Raft group on the node, so that one fsync
//! makes the appends of all groups durable at once.
//!
//! Callers change the log in memory (appends are readable as soon as `append` returns) and queue a
//! record; one flusher thread takes everything queued, writes it to the current segment file with the
//! engine's record framing, fsyncs once, and only then runs the callbacks of the appends it covered and
//! wakes the callers waiting for a vote to be durable. While it syncs, new records queue up for the next
//! round: that is the batching across groups.
//!
//! Records (payloads of framed records, `docs/format.md` "Raft log"): `Append` (entries of one group from
//! an index on; replay drops that group's entries from there first, so an overwrite needs no separate
//! truncation), `Vote`, `Truncate` (drop entries after an index), `Purge` (drop entries up to a log id),
//! and `Checkpoint`, the first record of every segment: every group's vote and purge point as of the
//! records before it, plus the valid length of the segment before it (whose torn tail, if any, recovery
//! then ignores). The oldest segment is deleted once a durable purge covers every entry it holds; the
//! checkpoints of later segments carry its votes and purge points. Recovery reads every segment twice:
//! first for each group's final purge point, then replaying records with everything at or below it
//! already gone, so entries that lived only in deleted segments are never missed.

mod record;

use cairn_engine::fs::FileSystem;
use cairn_engine::log::{LogWriter, read_log};
use parking_lot::{Condvar, Mutex};
use record::{Record, decode, encode_checkpoint, frame};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A Raft group on this node.
pub type GroupId = u64;

/// Default size at which the flusher starts a new segment.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Most bytes of records queued but not yet written; appends wait beyond this.
pub const MAX_QUEUED_BYTES: usize = 64 << 20;
/// Largest payload of one entry.
pub const MAX_ENTRY_BYTES: usize = 64 << 20;

const SEGMENT_SUFFIX: &str = ".rlog";
/// Reserved term marking, during recovery, an entry that lived only in a deleted segment. Such entries
/// are always truncated or purged later in the log; one that is not means data was lost.
const MISSING_TERM: u64 = u64::MAX;

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum RaftLogError {
    /// Reading or writing a file failed.
    #[error(transparent)]
    Storage(#[from] cairn_engine::Error),
    /// A record is malformed or contradicts the log.
    #[error("raft log corruption in {file}: {detail}")]
    Corruption {
        /// The segment.
        file: String,
        /// What is wrong.
        detail: String,
    },
    /// A write or fsync failed earlier: the log's durable tail is unknown until it is reopened.
    #[error("the raft log is poisoned: {0}")]
    Poisoned(String),
    /// The caller asked for something the log cannot do (a hole, a purge behind a purge, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// The log is closing.
    #[error("the raft log is closed")]
    Closed,
}

/// Shorthand.
pub type Result<T, E = RaftLogError> = std::result::Result<T, E>;

/// One log entry: its position and its opaque payload (the encoded Raft entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// Log index.
    pub index: u64,
    /// Term it was proposed in.
    pub term: u64,
    /// The encoded entry.
    pub payload: Vec<u8>,
}

/// A position in the log: `(term, index)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPosition {
    /// Term.
    pub term: u64,
    /// Index.
    pub index: u64,
}

/// Called once an append is durable (or failed).
pub type OnDurable = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Where and how the log lives.
#[derive(Clone)]
pub struct RaftLogConfig {
    /// Directory of the segment files.
    pub dir: PathBuf,
    /// File system (real, in-memory or fault-injecting).
    pub fs: Arc<dyn FileSystem>,
    /// Segment size at which a new one starts. Default [`DEFAULT_SEGMENT_BYTES`].
    pub segment_bytes: u64,
    /// Write and fsync each record on the thread that queued it, before that call returns, instead of
    /// on the flusher thread (which batches fsyncs across callers). Default `false`. For single-threaded
    /// deterministic simulation, where nothing may complete on another thread.
    pub flush_inline: bool,
}

impl RaftLogConfig {
    /// Defaults for a log in `dir` on `fs`.
    pub fn new(dir: impl Into<PathBuf>, fs: Arc<dyn FileSystem>) -> RaftLogConfig {
        RaftLogConfig { dir: dir.into(), fs, segment_bytes: DEFAULT_SEGMENT_BYTES, flush_inline: false }
    }
}

/// One group's log in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct GroupLog {
    // INVARIANT: indexes are consecutive and above the purge point. An empty log takes its first entry at
    // any index above the purge point (Raft logs start at 0, or wherever a snapshot left them).
    entries: VecDeque<LogEntry>,
    vote: Option<Vec<u8>>,
    purged: Option<LogPosition>,
}

impl GroupLog {
    fn next_index(&self) -> u64 {
        match (self.entries.back(), self.purged) {
            (Some(e), _) => e.index + 1,
            (None, Some(p)) => p.index + 1,
            (None, None) => 0,
        }
    }

    /// The lowest index an entry may have: just above the purge point.
    fn first_index(&self) -> u64 {
        self.purged.map_or(0, |p| p.index + 1)
    }

    /// Index of the first entry held (the next index if none).
    fn front_index(&self) -> u64 {
        self.entries.front().map_or_else(|| self.next_index(), |e| e.index)
    }

    /// Drops entries at `index` and after.
    fn cut(&mut self, index: u64) {
        let keep = index.saturating_sub(self.front_index()) as usize;
        self.entries.truncate(keep);
    }

    fn append(&mut self, entries: Vec<LogEntry>) -> Result<(), String> {
        let Some(first) = entries.first() else { return Ok(()) };
        let hole = !self.entries.is_empty() && first.index > self.next_index();
        if first.index < self.first_index() || hole {
            return Err(format!(
                "append at {} leaves a hole or rewrites purged entries (log holds {}..{})",
                first.index,
                self.first_index(),
                self.next_index()
            ));
        }
        if entries.windows(2).any(|w| w[1].index != w[0].index + 1) {
            return Err("appended entries are not consecutive".into());
        }
        self.cut(first.index);
        self.entries.extend(entries);
        Ok(())
    }

    fn purge(&mut self, upto: LogPosition) -> Result<(), String> {
        if self.purged.is_some_and(|p| p.index > upto.index) {
            return Err(format!("purge to {} is behind the purge point {:?}", upto.index, self.purged));
        }
        let drop = (upto.index + 1).saturating_sub(self.front_index()) as usize;
        self.entries.drain(..drop.min(self.entries.len()));
        self.purged = Some(upto);
        Ok(())
    }
}

/// What a record does, as far as checkpoints and segment collection need to know.
enum Effect {
    Append { first: u64, last: u64 },
    Vote(Vec<u8>),
    Purge(LogPosition),
    Truncate(Option<u64>),
    Other,
}

/// A record queued for the flusher, with what must happen once it is durable.
struct Queued {
    framed: Vec<u8>,
    group: GroupId,
    effect: Effect,
    on_durable: Option<OnDurable>,
}

/// What the flusher knows of a segment: the last index of each group it holds entries of.
#[derive(Default, Debug)]
struct SegmentInfo {
    last_index: HashMap<GroupId, u64>,
}

/// A group's vote and purge point, as checkpoints carry them.
type Mark = (Option<Vec<u8>>, Option<LogPosition>);

struct State {
    groups: HashMap<GroupId, GroupLog>,
    queue: Vec<Queued>,
    queued_bytes: usize,
    // Records queued so far, and how many of them are durable.
    queued_seq: u64,
    durable_seq: u64,
    poisoned: Option<String>,
    closing: bool,
}

struct Shared {
    config: RaftLogConfig,
    state: Mutex<State>,
    // Signals the flusher (work queued) and waiters (a round became durable, room in the queue).
    work: Condvar,
    done: Condvar,
    syncs: std::sync::atomic::AtomicU64,
}

/// The node's Raft log. See the module doc.
pub struct RaftLog {
    shared: Arc<Shared>,
    flusher: FlusherMode,
}

/// Where records are written: by a thread of their own, or by whoever queued them.
enum FlusherMode {
    Thread(Option<JoinHandle<()>>),
    Inline(Mutex<Flusher>),
}

impl std::fmt::Debug for RaftLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLog").field("dir", &self.shared.config.dir).finish_non_exhaustive()
    }
}

fn segment_name(number: u64) -> String {
    format!("{number:08}{SEGMENT_SUFFIX}")
}

fn corruption(path: &Path, detail: impl Into<String>) -> RaftLogError {
    RaftLogError::Corruption { file: path.display().to_string(), detail: detail.into() }
}

/// Replays one record onto `groups`, whose purge points are already the final ones: entries at or below
/// them are skipped and earlier purges change nothing.
fn replay(
    record: Record,
    groups: &mut HashMap<GroupId, GroupLog>,
    segments: &mut BTreeMap<u64, SegmentInfo>,
    number: u64,
) -> Result<(), String> {
    let raise = |g: &mut GroupLog, upto: LogPosition| -> Result<(), String> {
        if g.purged.is_none_or(|p| p.index < upto.index) {
            g.purge(upto)?;
        }
        Ok(())
    };
    match record {
        Record::Append(group, mut entries) => {
            let (Some(start), Some(last)) =
                (entries.first().map(|e| e.index), entries.last().map(|e| e.index))
            else {
                return Ok(());
            };
            note_append(segments, number, group, start, last);
            let g = groups.entry(group).or_default();
            // The append first dropped everything from its start on, even where all it wrote is purged.
            g.cut(start);
            let first = g.first_index();
            entries.retain(|e| e.index >= first);
            // Entries before these that lived only in deleted segments: placeholders, which a later
            // truncation or purge must remove.
            if let Some(start) = entries.first().map(|e| e.index).filter(|_| !g.entries.is_empty()) {
                for index in g.next_index()..start {
                    g.entries.push_back(LogEntry { index, term: MISSING_TERM, payload: Vec::new() });
                }
            }
            g.append(entries)?;
        }
        Record::Vote(group, vote) => groups.entry(group).or_default().vote = Some(vote),
        Record::Truncate(group, after) => {
            forget_after(segments, group, after);
            groups.entry(group).or_default().cut(after.map_or(0, |i| i + 1));
        }
        Record::Purge(group, upto) => raise(groups.entry(group).or_default(), upto)?,
        Record::Checkpoint { marks, .. } => {
            for (group, (vote, purged)) in marks {
                let g = groups.entry(group).or_default();
                if vote.is_some() {
                    g.vote = vote;
                }
                if let Some(upto) = purged {
                    raise(g, upto)?;
                }
            }
        }
    }
    Ok(())
}

/// Records that segment `number` holds `group`'s entries `first..=last`; the append dropped every later
/// entry first, wherever it lived.
fn note_append(
    segments: &mut BTreeMap<u64, SegmentInfo>,
    number: u64,
    group: GroupId,
    first: u64,
    last: u64,
) {
    forget_after(segments, group, first.checked_sub(1));
    segments.entry(number).or_default().last_index.insert(group, last);
}

/// Truncated entries are gone: they no longer keep their segments alive.
fn forget_after(segments: &mut BTreeMap<u64, SegmentInfo>, group: GroupId, after: Option<u64>) {
    for info in segments.values_mut() {
        match (info.last_index.get_mut(&group), after) {
            (Some(last), Some(after)) => *last = (*last).min(after),
            (Some(_), None) => {
                info.last_index.remove(&group);
            }
            (None, _) => {}
        }
    }
}

/// The writer side, owned by the flusher thread.
struct Flusher {
    shared: Arc<Shared>,
    writer: LogWriter,
    number: u64,
    segments: BTreeMap<u64, SegmentInfo>,
    // Every group's vote and purge point as of the records written so far: what the next checkpoint says.
    marks: HashMap<GroupId, Mark>,
}

impl RaftLog {
    /// Opens (or creates) the log in `config.dir`, replaying every segment, and starts the flusher.
    pub fn open(config: RaftLogConfig) -> Result<RaftLog> {
        let fs = Arc::clone(&config.fs);
        fs.create_dir_all(&config.dir)?;
        let mut numbers: Vec<u64> = fs
            .list(&config.dir)?
            .iter()
            .filter_map(|n| n.strip_suffix(SEGMENT_SUFFIX).and_then(|s| s.parse().ok()))
            .collect();
        numbers.sort_unstable();
        // Pass 1: every record, and each group's final purge point.
        let mut decoded = Vec::with_capacity(numbers.len());
        let mut groups: HashMap<GroupId, GroupLog> = HashMap::new();
        let mut raise = |group: GroupId, upto: LogPosition| {
            let g = groups.entry(group).or_default();
            if g.purged.is_none_or(|p| p.index < upto.index) {
                g.purged = Some(upto);
            }
        };
        for &number in &numbers {
            let path = config.dir.join(segment_name(number));
            let contents = read_log(fs.as_ref(), &path)?;
            let valid = contents.records.last().map_or(0, |r| r.end) as u64;
            let torn = valid < contents.data.len() as u64;
            let mut records = Vec::with_capacity(contents.records.len());
            for payload in contents.payloads() {
                let record = decode(payload).map_err(|d| corruption(&path, d))?;
                match &record {
                    Record::Purge(group, upto) => raise(*group, *upto),
                    Record::Checkpoint { marks, .. } => {
                        for (group, (_, purged)) in marks {
                            if let Some(upto) = purged {
                                raise(*group, *upto);
                            }
                        }
                    }
                    _ => {}
                }
                records.push(record);
            }
            decoded.push((number, path, valid, torn, records));
        }
        // Pass 2: replay in order; every segment opens with a checkpoint that seals the one before it.
        let mut segments = BTreeMap::new();
        let mut prev: Option<(PathBuf, u64, bool)> = None; // (path, valid length, ends in a torn tail)
        for (number, path, valid, torn, records) in decoded {
            if records.is_empty()
                && let Some((prev_path, _, true)) = &prev
            {
                return Err(corruption(prev_path, "torn tail not covered by a checkpoint"));
            }
            segments.insert(number, SegmentInfo::default());
            for (i, record) in records.into_iter().enumerate() {
                match (i, &record, &prev) {
                    (0, Record::Checkpoint { prev_len, .. }, Some((prev_path, prev_valid, _)))
                        if prev_len != prev_valid =>
                    {
                        return Err(corruption(
                            prev_path,
                            format!(
                                "holds {prev_valid} valid bytes; the next segment's checkpoint says {prev_len}"
                            ),
                        ));
                    }
                    (0, Record::Checkpoint { .. }, _) => {}
                    (0, _, _) => return Err(corruption(&path, "segment does not start with a checkpoint")),
                    (_, Record::Checkpoint { .. }, _) => {
                        return Err(corruption(&path, "checkpoint in the middle of a segment"));
                    }
                    _ => {}
                }
                replay(record, &mut groups, &mut segments, number).map_err(|d| corruption(&path, d))?;
            }
            prev = Some((path, valid, torn));
        }
        for (group, g) in &groups {
            if let Some(e) = g.entries.iter().find(|e| e.term == MISSING_TERM) {
                return Err(RaftLogError::Corruption {
                    file: config.dir.display().to_string(),
                    detail: format!(
                        "entry {} of group {group} is missing (its segment was deleted)",
                        e.index
                    ),
                });
            }
        }
        // A fresh segment for this run, starting with a checkpoint that seals the last one's valid length.
        let number = numbers.last().map_or(1, |n| n + 1);
        let prev_len = prev.as_ref().map_or(0, |(_, valid, _)| *valid);
        let marks: HashMap<GroupId, Mark> =
            groups.iter().map(|(id, g)| (*id, (g.vote.clone(), g.purged))).collect();
        let mut writer = LogWriter::create(fs.as_ref(), &config.dir.join(segment_name(number)))?;
        writer.add_record(&encode_checkpoint(prev_len, &marks))?;
        writer.sync()?;
        fs.sync_dir(&config.dir)?;
        segments.insert(number, SegmentInfo::default());
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State {
                groups,
                queue: Vec::new(),
                queued_bytes: 0,
                queued_seq: 0,
                durable_seq: 0,
                poisoned: None,
                closing: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            syncs: std::sync::atomic::AtomicU64::new(0),
        });
        let mut flusher = Flusher { shared: Arc::clone(&shared), writer, number, segments, marks };
        flusher.collect_garbage();
        let flusher = if shared.config.flush_inline {
            FlusherMode::Inline(Mutex::new(flusher))
        } else {
            let thread = std::thread::Builder::new()
                .name("cairn-raft-log".into())
                .spawn(move || flusher.run())
                .map_err(|e| {
                    RaftLogError::InvalidArgument(format!("cannot start the raft log flusher: {e}"))
                })?;
            FlusherMode::Thread(Some(thread))
        };
        Ok(RaftLog { shared, flusher })
    }

    /// Queues `record` after `apply` changed the in-memory log; returns the record's sequence number.
    fn submit(
        &self,
        group: GroupId,
        payload: Vec<u8>,
        effect: Effect,
        apply: impl FnOnce(&mut GroupLog) -> Result<(), String>,
        on_durable: Option<OnDurable>,
    ) -> Result<u64> {
        let framed = frame(&payload);
        let mut state = self.shared.state.lock();
        while state.queued_bytes > MAX_QUEUED_BYTES && state.poisoned.is_none() && !state.closing {
            self.shared.done.wait(&mut state);
        }
        if let Some(why) = &state.poisoned {
            return Err(RaftLogError::Poisoned(why.clone()));
        }
        if state.closing {
            return Err(RaftLogError::Closed);
        }
        apply(state.groups.entry(group).or_default()).map_err(RaftLogError::InvalidArgument)?;
        state.queued_bytes += framed.len();
        state.queue.push(Queued { framed, group, effect, on_durable });
        state.queued_seq += 1;
        let seq = state.queued_seq;
        drop(state);
        match &self.flusher {
            FlusherMode::Thread(_) => {
                self.shared.work.notify_one();
            }
            FlusherMode::Inline(flusher) => {
                let mut flusher = flusher.lock();
                let round = take_round(&mut self.shared.state.lock());
                if let Some((queue, seq)) = round {
                    flusher.flush(queue, seq);
                }
            }
        }
        Ok(seq)
    }

    /// Waits until record `seq` is durable.
    fn wait_durable(&self, seq: u64) -> Result<()> {
        let mut state = self.shared.state.lock();
        loop {
            if state.durable_seq >= seq {
                return Ok(());
            }
            if let Some(why) = &state.poisoned {
                return Err(RaftLogError::Poisoned(why.clone()));
            }
            self.shared.done.wait(&mut state);
        }
    }

    /// Appends `entries` (consecutive, from at most the group's next index: an earlier start overwrites
    /// that suffix). They are readable when this returns; `on_durable` runs once they are on disk.
    pub fn append(&self, group: GroupId, entries: Vec<LogEntry>, on_durable: OnDurable) -> Result<()> {
        if let Some(e) = entries.iter().find(|e| e.term == MISSING_TERM) {
            return Err(RaftLogError::InvalidArgument(format!(
                "entry {} has the reserved term {MISSING_TERM}",
                e.index
            )));
        }
        if let Some(e) = entries.iter().find(|e| e.payload.len() > MAX_ENTRY_BYTES) {
            return Err(RaftLogError::InvalidArgument(format!(
                "entry {} holds {} bytes, over {MAX_ENTRY_BYTES}",
                e.index,
                e.payload.len()
            )));
        }
        let payload = record::encode_append(group, &entries);
        let effect = match (entries.first(), entries.last()) {
            (Some(first), Some(last)) => Effect::Append { first: first.index, last: last.index },
            _ => Effect::Other,
        };
        self.submit(group, payload, effect, move |g| g.append(entries), Some(on_durable))?;
        Ok(())
    }

    /// Saves the group's vote; returns once it is durable.
    pub fn save_vote(&self, group: GroupId, vote: &[u8]) -> Result<()> {
        let payload = record::encode_vote(group, vote);
        let owned = vote.to_vec();
        let seq = self.submit(
            group,
            payload,
            Effect::Vote(vote.to_vec()),
            move |g| {
                g.vote = Some(owned);
                Ok(())
            },
            None,
        )?;
        self.wait_durable(seq)
    }

    /// Drops the group's entries after `after` (all of them for `None`).
    pub fn truncate_after(&self, group: GroupId, after: Option<u64>) -> Result<()> {
        let payload = record::encode_truncate(group, after);
        self.submit(
            group,
            payload,
            Effect::Truncate(after),
            move |g| {
                g.cut(after.map_or(0, |i| i + 1));
                Ok(())
            },
            None,
        )?;
        Ok(())
    }

    /// Drops the group's entries up to and including `upto`, which becomes its purge point.
    pub fn purge(&self, group: GroupId, upto: LogPosition) -> Result<()> {
        let payload = record::encode_purge(group, upto);
        self.submit(group, payload, Effect::Purge(upto), move |g| g.purge(upto), None)?;
        Ok(())
    }

    /// Waits until everything queued so far is durable.
    pub fn sync(&self) -> Result<()> {
        let seq = self.shared.state.lock().queued_seq;
        self.wait_durable(seq)
    }

    /// The group's vote, if one was saved.
    pub fn vote(&self, group: GroupId) -> Option<Vec<u8>> {
        self.shared.state.lock().groups.get(&group).and_then(|g| g.vote.clone())
    }

    /// The group's purge point and last entry position.
    pub fn state(&self, group: GroupId) -> (Option<LogPosition>, Option<LogPosition>) {
        let state = self.shared.state.lock();
        let Some(g) = state.groups.get(&group) else { return (None, None) };
        let last = g.entries.back().map(|e| LogPosition { term: e.term, index: e.index }).or(g.purged);
        (g.purged, last)
    }

    /// The group's entries with indexes in `range` that the log holds, in order.
    pub fn entries(&self, group: GroupId, range: std::ops::Range<u64>) -> Vec<LogEntry> {
        let state = self.shared.state.lock();
        let Some(g) = state.groups.get(&group) else { return Vec::new() };
        let first = g.front_index();
        let start = range.start.max(first);
        let end = range.end.min(g.next_index());
        if start >= end {
            return Vec::new();
        }
        g.entries.range((start - first) as usize..(end - first) as usize).cloned().collect()
    }

    /// Groups with anything in the log.
    pub fn groups(&self) -> Vec<GroupId> {
        let mut ids: Vec<_> = self.shared.state.lock().groups.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Fsyncs done so far (each covers every record queued before it started).
    pub fn syncs(&self) -> u64 {
        self.shared.syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Makes everything queued durable and stops the flusher.
    pub fn close(mut self) -> Result<()> {
        let synced = self.sync();
        self.stop();
        synced
    }

    fn stop(&mut self) {
        self.shared.state.lock().closing = true;
        self.shared.work.notify_all();
        self.shared.done.notify_all();
        if let FlusherMode::Thread(thread) = &mut self.flusher
            && let Some(thread) = thread.take()
        {
            let _ = thread.join();
        }
    }
}

impl Drop for RaftLog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Takes everything queued, with the sequence number of its last record; `None` if nothing is.
fn take_round(state: &mut State) -> Option<(Vec<Queued>, u64)> {
    if state.queue.is_empty() {
        return None;
    }
    state.queued_bytes = 0;
    Some((std::mem::take(&mut state.queue), state.queued_seq))
}

impl Flusher {
    fn run(mut self) {
        loop {
            let round = {
                let mut state = self.shared.state.lock();
                while state.queue.is_empty() && !state.closing {
                    self.shared.work.wait(&mut state);
                }
                take_round(&mut state)
            };
            let Some((queue, seq)) = round else { return };
            if !self.flush(queue, seq) {
                return;
            }
        }
    }

    /// Writes and syncs `queue` (whose last record is `seq`), marks it durable or the log poisoned, and
    /// runs the callbacks. Returns whether the log is still healthy.
    fn flush(&mut self, queue: Vec<Queued>, seq: u64) -> bool {
        let outcome = self.write_round(&queue);
        let mut callbacks = Vec::with_capacity(queue.len());
        {
            let mut state = self.shared.state.lock();
            match &outcome {
                Ok(()) => state.durable_seq = seq,
                Err(e) => {
                    state.poisoned.get_or_insert_with(|| e.clone());
                }
            }
            for q in queue {
                callbacks.extend(q.on_durable);
            }
        }
        self.shared.done.notify_all();
        let healthy = outcome.is_ok();
        for callback in callbacks {
            callback(outcome.clone());
        }
        healthy
    }

    /// Writes and fsyncs one round of records, then rotates and collects segments if due.
    fn write_round(&mut self, queue: &[Queued]) -> Result<(), String> {
        let mut buf = Vec::with_capacity(queue.iter().map(|q| q.framed.len()).sum());
        for q in queue {
            buf.extend_from_slice(&q.framed);
        }
        self.writer.append_framed(&buf).map_err(|e| format!("raft log write failed: {e}"))?;
        self.writer.sync().map_err(|e| format!("raft log fsync failed: {e}"))?;
        self.shared.syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut purged = false;
        for q in queue {
            match &q.effect {
                Effect::Append { first, last } => {
                    note_append(&mut self.segments, self.number, q.group, *first, *last)
                }
                Effect::Truncate(after) => {
                    forget_after(&mut self.segments, q.group, *after);
                    purged = true;
                }
                Effect::Vote(v) => self.marks.entry(q.group).or_default().0 = Some(v.clone()),
                Effect::Purge(p) => {
                    self.marks.entry(q.group).or_default().1 = Some(*p);
                    purged = true;
                }
                Effect::Other => {}
            }
        }
        if self.writer.len() >= self.shared.config.segment_bytes {
            self.rotate().map_err(|e| format!("raft log rotation failed: {e}"))?;
            purged = true;
        }
        if purged {
            self.collect_garbage();
        }
        Ok(())
    }

    /// Starts the next segment with a checkpoint of every group's vote and purge point.
    fn rotate(&mut self) -> Result<()> {
        let fs = Arc::clone(&self.shared.config.fs);
        let dir = &self.shared.config.dir;
        let next = self.number + 1;
        let checkpoint = encode_checkpoint(self.writer.len(), &self.marks);
        let mut writer = LogWriter::create(fs.as_ref(), &dir.join(segment_name(next)))?;
        writer.add_record(&checkpoint)?;
        writer.sync()?;
        fs.sync_dir(dir)?;
        self.writer = writer;
        self.number = next;
        self.segments.insert(next, SegmentInfo::default());
        Ok(())
    }

    /// Deletes the oldest sealed segments while durable purges cover every entry they hold. Oldest
    /// first: the checkpoint chain of what remains stays unbroken.
    fn collect_garbage(&mut self) {
        let fs = Arc::clone(&self.shared.config.fs);
        while let Some((&n, info)) = self.segments.iter().next() {
            let purged = |g: &GroupId| self.marks.get(g).and_then(|(_, p)| p.map(|p| p.index));
            let covered = info.last_index.iter().all(|(g, last)| purged(g).is_some_and(|p| p >= *last));
            if n == self.number
                || !covered
                || fs.remove(&self.shared.config.dir.join(segment_name(n))).is_err()
            {
                return;
            }
            self.segments.remove(&n);
        }
    }
}
