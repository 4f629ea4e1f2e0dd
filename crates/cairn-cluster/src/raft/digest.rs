//! Where consistency-check digests are computed: a node-wide pool of [`MAX_DIGEST_THREADS`] background
//! threads at a low scheduling priority ([`DIGEST_NICENESS`]), so however many shards check at once
//! the node hashes at most that many at a time. A hash yields the CPU every [`YIELD_EVERY_BYTES`]: a
//! thread woken for a request on the hash's core then waits microseconds, not the hash's time slice
//! (which neither niceness nor the idle scheduling class prevented: read p99 rose 3× during checks of
//! a 1 GiB shard without the yields, and stayed level with them). A check waits for a digest still
//! being computed (see [`Replica::check_consistency`](super::Replica::check_consistency)), so a slow
//! hash on a busy node delays the check instead of failing it.

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// Bytes of rows a digest thread hashes between two yields of the CPU (tens of microseconds of work):
/// a request's thread that wakes on the digest thread's core runs after at most that, instead of
/// after the digest thread's time slice (milliseconds, at any niceness).
pub const YIELD_EVERY_BYTES: u64 = 64 << 10;
/// Digests computed at once on a node.
pub const MAX_DIGEST_THREADS: usize = 1;
/// The digest threads' niceness (Linux: 19 is the lowest priority): a thread at 19 gets about 1.5% of
/// a core that a normal thread wants, and all of one that nothing else wants.
pub const DIGEST_NICENESS: i32 = 19;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Runs `job` on the node's digest pool; `Err` if no digest thread could be started.
pub(crate) fn run(job: Job) -> std::io::Result<()> {
    static POOL: OnceLock<Mutex<Option<mpsc::Sender<Job>>>> = OnceLock::new();
    let pool = POOL.get_or_init(|| Mutex::new(None));
    let mut sender = pool.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if sender.is_none() {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        for n in 0..MAX_DIGEST_THREADS {
            let rx = std::sync::Arc::clone(&rx);
            std::thread::Builder::new().name(format!("cairn-digest-{n}")).spawn(move || {
                lower_priority();
                loop {
                    let next = rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).recv();
                    match next {
                        // A job that panics must not take the node's digest thread with it.
                        Ok(job) => {
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                        }
                        Err(_) => return,
                    }
                }
            })?;
        }
        *sender = Some(tx);
    }
    match sender.as_ref().map(|tx| tx.send(job)) {
        Some(Ok(())) => Ok(()),
        _ => {
            *sender = None;
            Err(std::io::Error::other("the digest threads are gone"))
        }
    }
}

/// Lowers the calling thread's scheduling priority to [`DIGEST_NICENESS`] (on Linux a thread's nice
/// value is its own); where that fails the thread keeps the normal priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), DIGEST_NICENESS) {
        tracing::debug!(error = %e, "cannot lower the digest thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's niceness.
    #[cfg(target_os = "linux")]
    fn nice() -> Option<i32> {
        rustix::process::getpriority_process(Some(rustix::thread::gettid())).ok()
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn jobs_run_on_a_low_priority_thread() {
        let before = nice();
        let (tx, rx) = mpsc::channel();
        for n in 0..3 {
            let tx = tx.clone();
            run(Box::new(move || {
                if n == 1 {
                    panic!("a job that panics");
                }
                let name = std::thread::current().name().map(str::to_string);
                let _ = tx.send((n, nice(), name));
            }))
            .unwrap_or_else(|e| panic!("no digest thread: {e}"));
        }
        // Job 1 panicked; the thread lived on to run job 2.
        let seen: Vec<_> = (0..2).map(|_| rx.recv().unwrap_or_else(|e| panic!("{e}"))).collect();
        assert_eq!(seen.iter().map(|(n, _, _)| *n).collect::<Vec<_>>(), vec![0, 2]);
        for (n, nice, name) in seen {
            // Lowering one's own priority needs no privilege.
            assert_eq!(nice, Some(DIGEST_NICENESS), "job {n}");
            assert!(name.is_some_and(|n| n.starts_with("cairn-digest-")), "job {n}");
        }
        // This thread kept its priority.
        assert_eq!(nice(), before);
    }
}
