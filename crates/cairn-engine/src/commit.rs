//! Group commit. Writers join a queue; the writer at the front becomes the leader, takes the writers
//! behind it (up to `max_group_commit_bytes`), assigns their sequence numbers, appends all their WAL
//! records with one write and at most one fsync, inserts them into the memtable, publishes the new
//! visible sequence number and wakes the followers. Concurrent writers therefore share one fsync.
//!
//! Only the leader touches the WAL and rotates the memtable, so both need no other lock while it works.
//! A failed append or sync poisons the Db: the WAL's tail is unknown, so no later write may be
//! acknowledged until the Db is reopened and recovers from what is durable.

use crate::batch::{BatchIter, WriteBatch};
use crate::db::{DbInner, WriteOptions};
use crate::error::{Error, Result};
use crate::log::LogWriter;
use crate::memtable::Memtable;
use crate::metrics::Metrics;
use crate::version_set::log_path;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// One waiting write.
struct Slot {
    batch: Mutex<Option<WriteBatch>>,
    sync: bool,
    bytes: usize,
    result: Mutex<Option<Result<()>>>,
}

/// The queue of writers plus the leader-only WAL and sequence state.
pub(crate) struct CommitQueue {
    queue: Mutex<VecDeque<Arc<Slot>>>,
    cv: Condvar,
    /// Leader-only state. INVARIANT: locked only by the current leader, a writer committing alone (it
    /// found the queue empty with this lock held), `flush`'s rotation, or open/close.
    leader: Mutex<LeaderState>,
}

pub(crate) struct LeaderState {
    /// The WAL being appended; `None` when the WAL is off.
    pub(crate) wal: Option<LogWriter>,
    /// Last sequence number assigned.
    pub(crate) last_seq: u64,
    buf: Vec<u8>,
    /// The group being committed and its batches; kept between groups to reuse their allocations.
    group: Vec<Arc<Slot>>,
    batches: Vec<WriteBatch>,
}

impl CommitQueue {
    pub(crate) fn new(wal: Option<LogWriter>, last_seq: u64) -> CommitQueue {
        CommitQueue {
            queue: Mutex::new(VecDeque::new()),
            cv: Condvar::new(),
            leader: Mutex::new(LeaderState {
                wal,
                last_seq,
                buf: Vec::new(),
                group: Vec::new(),
                batches: Vec::new(),
            }),
        }
    }
}

impl CommitQueue {
    /// Makes later writes take sequence numbers above `floor` (an import brought entries up to it).
    /// The caller holds the ownership gate exclusively, so no write is being committed.
    pub(crate) fn raise_sequence(&self, db: &DbInner, floor: u64) {
        let mut leader = self.leader.lock();
        if leader.last_seq < floor {
            leader.last_seq = floor;
            db.visible_seq.store(floor, Ordering::Release);
        }
    }
}

/// Commits one batch through the queue.
pub(crate) fn write(db: &Arc<DbInner>, batch: WriteBatch, options: WriteOptions) -> Result<()> {
    let q = &db.commit;
    // Alone: no writer queued and no leader at work. Commit without joining the queue (no slot to
    // allocate, nobody to wake). A writer that queues meanwhile waits for the leader lock, as it would
    // for a leader, so sequence order is still the order the leader lock was taken in.
    if let Some(mut leader) = q.leader.try_lock()
        && q.queue.lock().is_empty()
    {
        leader.batches.push(batch);
        return commit_batches(db, &mut leader, options.sync);
    }
    let slot = Arc::new(Slot {
        bytes: batch.encoded_len(),
        batch: Mutex::new(Some(batch)),
        sync: options.sync,
        result: Mutex::new(None),
    });
    let mut queue = q.queue.lock();
    queue.push_back(Arc::clone(&slot));
    loop {
        if let Some(r) = slot.result.lock().take() {
            return r;
        }
        if queue.front().is_some_and(|f| Arc::ptr_eq(f, &slot)) {
            break;
        }
        q.cv.wait(&mut queue);
    }
    drop(queue);
    // This writer leads. Only the writer at the front leads and only the leader pops, so the front stays
    // this slot while the leader lock is taken and the group gathered.
    let mut leader = q.leader.lock();
    let leader = &mut *leader;
    let mut group = std::mem::take(&mut leader.group);
    let mut bytes = 0usize;
    for s in q.queue.lock().iter() {
        if !group.is_empty() && bytes + s.bytes > db.config.max_group_commit_bytes {
            break;
        }
        bytes += s.bytes;
        group.push(Arc::clone(s));
    }

    let outcome = commit_group(db, leader, &group);

    let mut queue = q.queue.lock();
    for (i, s) in group.iter().enumerate() {
        queue.pop_front();
        if i > 0 {
            let r = match &outcome {
                Ok(()) => Ok(()),
                Err(e) => Err(Error::Poisoned(e.to_string())),
            };
            *s.result.lock() = Some(r);
        }
    }
    drop(queue);
    q.cv.notify_all();
    group.clear();
    leader.group = group;
    outcome
}

fn commit_group(db: &Arc<DbInner>, leader: &mut LeaderState, group: &[Arc<Slot>]) -> Result<()> {
    let mut sync = false;
    for s in group {
        if let Some(b) = s.batch.lock().take() {
            sync |= s.sync;
            leader.batches.push(b);
        }
    }
    commit_batches(db, leader, sync)
}

/// Commits the batches gathered in `leader.batches`: assigns their sequence numbers, appends them to the
/// WAL with one write (and one fsync if `sync`), inserts them into the memtable and publishes them. Leaves
/// `leader.batches` empty, its allocation kept for the next group.
fn commit_batches(db: &Arc<DbInner>, leader: &mut LeaderState, sync: bool) -> Result<()> {
    let mut batches = std::mem::take(&mut leader.batches);
    let outcome = commit_taken(db, leader, &mut batches, sync);
    batches.clear();
    leader.batches = batches;
    outcome
}

fn commit_taken(
    db: &Arc<DbInner>,
    leader: &mut LeaderState,
    batches: &mut [WriteBatch],
    sync: bool,
) -> Result<()> {
    let mem = make_room(db, leader)?;
    leader.buf.clear();
    let mut seq = leader.last_seq;
    for b in batches.iter_mut() {
        b.set_sequence(seq + 1);
        seq += b.len() as u64;
        if leader.wal.is_some() {
            LogWriter::encode_record(&mut leader.buf, b.encoded());
        }
    }
    if let Some(wal) = leader.wal.as_mut() {
        let written = wal.append_framed(&leader.buf).and_then(|()| if sync { wal.sync() } else { Ok(()) });
        if let Err(e) = written {
            db.poison(format!("WAL write failed: {e}"));
            return Err(e);
        }
        Metrics::add(&db.metrics.wal_bytes, leader.buf.len() as u64);
        if sync {
            Metrics::add(&db.metrics.wal_syncs, 1);
        }
    }
    let mut user_bytes = 0u64;
    for b in batches.iter() {
        insert_batch(&mem, b.encoded()).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        user_bytes += b.encoded_len() as u64;
    }
    leader.last_seq = seq;
    db.visible_seq.store(seq, Ordering::Release);
    Metrics::add(&db.metrics.writes, batches.len() as u64);
    Metrics::add(&db.metrics.write_groups, 1);
    Metrics::add(&db.metrics.user_bytes_written, user_bytes);
    Ok(())
}

/// Inserts the entries of an encoded batch (with its sequence set) into `mem`.
pub(crate) fn insert_batch(mem: &Memtable, encoded: &[u8]) -> std::result::Result<u64, &'static str> {
    let it = BatchIter::new(encoded)?;
    let mut seq = it.first_seq;
    for entry in it {
        let (kind, user_key, value) = entry?;
        mem.insert(user_key, seq, kind, value);
        seq += 1;
    }
    Ok(seq.saturating_sub(1))
}

/// Makes sure the memtable has room, rotating it (and the WAL) when full and stalling while too many
/// immutable memtables or L0 files wait. Returns the memtable to insert into.
fn make_room(db: &Arc<DbInner>, leader: &mut LeaderState) -> Result<Arc<Memtable>> {
    let mut state = db.state.lock();
    let mut stall_start: Option<Instant> = None;
    loop {
        if let Some(why) = &state.poisoned {
            return Err(Error::Poisoned(why.clone()));
        }
        if state.closing {
            return Err(Error::Closed);
        }
        let l0 = state.version.levels[0].len();
        let full = state.mem.approximate_bytes() >= db.config.memtable_bytes;
        let too_many_imm = state.imm.len() >= db.config.max_immutable_memtables;
        if (full && too_many_imm) || l0 >= db.config.l0_stop_writes_trigger {
            if stall_start.is_none() {
                stall_start = Some(Instant::now());
                Metrics::add(&db.metrics.stalls, 1);
            }
            db.bg_cv.wait(&mut state);
            continue;
        }
        if full {
            drop(state);
            rotate(db, leader)?;
            state = db.state.lock();
            continue;
        }
        break;
    }
    if let Some(start) = stall_start {
        Metrics::add(&db.metrics.stall_micros, start.elapsed().as_micros() as u64);
    }
    Ok(Arc::clone(&state.mem))
}

/// Moves the active memtable to the immutable list behind a fresh memtable (and fresh WAL file).
/// Called only by the commit leader (which holds `leader`) or by `flush` through the queue.
pub(crate) fn rotate(db: &Arc<DbInner>, leader: &mut LeaderState) -> Result<()> {
    let log_number = if db.config.wal {
        let number = db.versions.lock().new_file_number();
        let path = log_path(&db.config.dir, number);
        let created = LogWriter::create_wal(db.config.fs.as_ref(), &path)
            .and_then(|w| db.config.fs.sync_dir(&db.config.dir).map(|()| w));
        let wal = match created {
            Ok(w) => w,
            Err(e) => {
                db.poison(format!("creating WAL {} failed: {e}", path.display()));
                return Err(e);
            }
        };
        // The old WAL's bytes were all written by earlier groups; make them durable before the memtable
        // they back can be dropped by a flush.
        if let Some(mut old) = leader.wal.replace(wal)
            && let Err(e) = old.sync()
        {
            db.poison(format!("WAL sync failed: {e}"));
            return Err(e);
        }
        number
    } else {
        0
    };
    let mut state = db.state.lock();
    let fresh = Arc::new(Memtable::new(log_number));
    let old = std::mem::replace(&mut state.mem, fresh);
    if !old.is_empty() {
        state.imm.push_back(old);
    }
    drop(state);
    db.bg_cv.notify_all();
    Ok(())
}

/// Rotates the memtable on behalf of `flush`, through the leader lock so no group commit races it.
pub(crate) fn rotate_for_flush(db: &Arc<DbInner>) -> Result<()> {
    let mut leader = db.commit.leader.lock();
    if db.state.lock().mem.is_empty() {
        return Ok(());
    }
    rotate(db, &mut leader)
}
