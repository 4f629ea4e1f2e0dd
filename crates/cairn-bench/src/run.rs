//! Running workloads: the directory databases live in, and ops split over worker threads.

use crate::histogram::Histogram;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The directory the databases go under: `dir` (created if missing) when given, else a fresh directory
/// named `prefix…` under the system temp dir, removed when the returned guard drops.
pub fn work_root(dir: Option<&Path>, prefix: &str) -> Result<(PathBuf, Option<tempfile::TempDir>), String> {
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            Ok((dir.to_path_buf(), None))
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix(prefix)
                .tempdir_in(std::env::temp_dir())
                .map_err(|e| format!("creating a temp dir: {e}"))?;
            Ok((t.path().to_path_buf(), Some(t)))
        }
    }
}

/// Splits `total` ops over `threads` workers, runs `work(thread, op range, histogram)` on each, and
/// returns their merged latencies and the wall time, or the first worker's error. A worker's panic is
/// passed on.
pub fn parallel<E, F>(threads: usize, total: u64, work: F) -> Result<(Histogram, f64), E>
where
    E: Send,
    F: Fn(usize, Range<u64>, &mut Histogram) -> Result<(), E> + Sync,
{
    let start = Instant::now();
    let outcomes: Vec<Result<Histogram, E>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let lo = total * t as u64 / threads as u64;
                let hi = total * (t as u64 + 1) / threads as u64;
                let work = &work;
                s.spawn(move || {
                    let mut h = Histogram::default();
                    work(t, lo..hi, &mut h).map(|()| h)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let mut merged = Histogram::default();
    for outcome in outcomes {
        merged.merge(&outcome?);
    }
    Ok((merged, secs))
}
