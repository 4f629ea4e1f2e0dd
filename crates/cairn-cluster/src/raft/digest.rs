//! Where consistency-check digests are computed: a node-wide pool of [`MAX_DIGEST_THREADS`] background
//! threads at the lowest scheduling priority (Linux `SCHED_IDLE`, and niceness [`DIGEST_NICENESS`]
//! where that is refused), so however many shards check at once the node hashes at most that many at a
//! time, and a hash takes only the CPU that serving requests leaves over: a request's thread that
//! wakes preempts it at once (at nice 19 alone, a request could wait out the hash's time slice: read
//! p99 rose 2.7–2.8× during checks). A check waits for a digest still being computed (see
//! [`Replica::check_consistency`](super::Replica::check_consistency)), so a slow hash on a busy node
//! delays the check instead of failing it.

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

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
                        Ok(job) => job(),
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

/// Lowers the calling thread's scheduling priority to the idle class (or, if refused, to
/// [`DIGEST_NICENESS`]); where both fail the thread keeps the normal priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = idle_class() {
        tracing::debug!(error = %e, "cannot move the digest thread to the idle scheduling class");
        if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), DIGEST_NICENESS)
        {
            tracing::debug!(error = %e, "cannot lower the digest thread's priority");
        }
    }
}

/// Moves the calling thread to `SCHED_IDLE` (on Linux, `sched_setscheduler` with pid 0 changes the
/// calling thread only).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn idle_class() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a plain system call; `param` is a valid, initialised `sched_param` that outlives it, and
    // the kernel only reads it.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's scheduling policy, from procfs (`None` where there is none).
    fn policy() -> Option<u32> {
        let sched = std::fs::read_to_string("/proc/thread-self/sched").ok()?;
        let line = sched.lines().find(|l| l.starts_with("policy"))?;
        line.rsplit(':').next()?.trim().parse().ok()
    }

    #[test]
    fn jobs_run_on_an_idle_class_thread() {
        let before = policy();
        let (tx, rx) = mpsc::channel();
        for n in 0..3 {
            let tx = tx.clone();
            run(Box::new(move || {
                let name = std::thread::current().name().map(str::to_string);
                let _ = tx.send((n, policy(), name));
            }))
            .unwrap_or_else(|e| panic!("no digest thread: {e}"));
        }
        let mut seen: Vec<_> = (0..3).map(|_| rx.recv().unwrap_or_else(|e| panic!("{e}"))).collect();
        seen.sort_by_key(|(n, _, _)| *n);
        for (n, policy, name) in seen {
            // Moving oneself to the idle class needs no privilege (5 is SCHED_IDLE).
            if cfg!(target_os = "linux") {
                assert_eq!(policy, Some(5), "job {n}");
            }
            assert!(name.is_some_and(|n| n.starts_with("cairn-digest-")), "job {n}");
        }
        // This thread kept its class.
        assert_eq!(policy(), before);
    }
}
