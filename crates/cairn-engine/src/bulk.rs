//! Bulk work — a backup's export of a shard snapshot (its digest and its copy), object-storage
//! transfers — kept from taking the cores a node's requests need: it runs at a lower CPU priority
//! ([`lower_this_thread`]: a small share of the cores while requests want them, not a fair one;
//! CockroachDB's admission control runs backups as "elastic" work for the same reason), and a [`Pacer`]
//! bounds the bytes a backup copies per second, which bounds what it costs elsewhere too (an object
//! store on the same machine). The digest's reads are not paced: only the lower priority holds them.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The nice value bulk work runs at. Linux gives a nice-10 thread about a tenth of the CPU weight of a
/// nice-0 one, so it slows but does not stop while the node is busy.
pub const BULK_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority to [`BULK_NICE`] (or leaves it where it is if it is
/// lower already) and returns whether it could (on Linux, per thread; elsewhere nothing happens).
/// Without privileges a thread cannot raise its priority again, so call this only on a thread made
/// for bulk work.
pub fn lower_this_thread() -> bool {
    lower(BULK_NICE)
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn lower(nice: i32) -> bool {
    // SAFETY: gettid, getpriority and setpriority take plain integers and touch no memory of this
    // process; with PRIO_PROCESS and a thread id, Linux reads and sets that one thread's nice value.
    // (getpriority answers -1 on an error as well: the target is then `nice`, a lowering all the same.)
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        let target = libc::getpriority(libc::PRIO_PROCESS, tid).max(nice);
        libc::setpriority(libc::PRIO_PROCESS, tid, target) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn lower(_nice: i32) -> bool {
    false
}

/// The longest a single [`Pacer::take`] waits, whatever it is asked for.
const MAX_PACE_WAIT: Duration = Duration::from_secs(60);

/// A byte rate shared by bulk work: [`Pacer::take`] returns once the bytes it is given fit under the
/// rate since the pacer was last idle, so the work's average rate stays at or below it. No credit
/// builds up while nothing runs: work starting after a pause starts at the rate, not in a burst.
#[derive(Debug)]
pub struct Pacer {
    /// Bytes per second; 0: no limit.
    rate: AtomicU64,
    /// When the bytes taken so far will have passed at the rate.
    next: Mutex<Option<Instant>>,
}

/// A pacer that never waits.
pub static UNPACED: Pacer = Pacer::new(0);

impl Pacer {
    /// A pacer at `bytes_per_sec` (0: no limit).
    pub const fn new(bytes_per_sec: u64) -> Pacer {
        Pacer { rate: AtomicU64::new(bytes_per_sec), next: Mutex::new(None) }
    }

    /// Changes the rate (0: no limit) for what is taken from now on.
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// The rate in bytes per second (0: no limit).
    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Accounts for `bytes` about to be read, first sleeping until the bytes taken before them have
    /// passed at the rate (each call counts for at most a minute of it; callers sharing the pacer
    /// wait for each other's).
    pub fn take(&self, bytes: u64) {
        let rate = self.rate();
        if rate == 0 || bytes == 0 {
            return;
        }
        let cost = Duration::try_from_secs_f64(bytes as f64 / rate as f64)
            .unwrap_or(MAX_PACE_WAIT)
            .min(MAX_PACE_WAIT);
        let wait = {
            let mut next = self.next.lock();
            let now = Instant::now();
            let start = next.map_or(now, |n| n.max(now));
            *next = Some(start + cost);
            start - now
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    /// This thread's id.
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn tid() -> i32 {
        // SAFETY: gettid takes nothing and returns the calling thread's id.
        unsafe { libc::gettid() }
    }

    /// Thread `tid`'s nice value (field 19 of its stat line).
    #[cfg(target_os = "linux")]
    fn nice_of(tid: i32) -> Option<i64> {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
        // The fields after the command's closing parenthesis start at field 3.
        stat[stat.rfind(')')? + 2..].split(' ').nth(16)?.parse().ok()
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn only_the_thread_that_asks_runs_at_the_bulk_nice_value() {
        let this = tid();
        let before = nice_of(this);
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let bulk = std::thread::spawn(move || {
            let lowered = super::lower_this_thread();
            let _ = tid_tx.send((tid(), lowered));
            let _ = done_rx.recv();
        });
        let Ok((bulk_tid, lowered)) = tid_rx.recv() else { panic!("the bulk thread sent nothing") };
        let bulk_nice = nice_of(bulk_tid);
        drop(done_tx);
        let _ = bulk.join();
        assert!(lowered, "setpriority refused to lower a thread's priority");
        let want = before.map(|n| n.max(i64::from(super::BULK_NICE)));
        assert_eq!(bulk_nice, want, "the bulk thread runs at nice {} or lower", super::BULK_NICE);
        assert_eq!(nice_of(this), before, "the calling thread kept its priority");
    }

    #[test]
    fn a_pacer_holds_reads_to_its_rate_and_an_unpaced_one_never_waits() {
        // 4 chunks of 100 KB at 1 MB/s: the first goes at once, the others after 100 ms each.
        let pacer = super::Pacer::new(1_000_000);
        let start = std::time::Instant::now();
        for _ in 0..4 {
            pacer.take(100_000);
        }
        let paced = start.elapsed();
        assert!(paced >= std::time::Duration::from_millis(300), "4 x 100 KB at 1 MB/s took {paced:?}");
        let start = std::time::Instant::now();
        for _ in 0..1000 {
            super::UNPACED.take(1 << 30);
        }
        pacer.set_rate(0);
        pacer.take(1 << 40);
        assert!(start.elapsed() < std::time::Duration::from_secs(1), "unpaced work waited");
    }
}
