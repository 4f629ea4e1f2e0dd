//! The async runtime shard groups run on: tokio, with the one thing openraft draws at random (election
//! and first-tick timeouts) taken from a seeded generator when the caller opened a seed scope.
//!
//! Production code never opens a scope: every draw then comes from a generator seeded by the operating
//! system. The deterministic simulation runs each node inside [`with_seed`], so a run's timeouts follow
//! from its seed. A task spawned through the runtime inherits a seed derived from its parent's, so the
//! sequence does not depend on which task draws first across the node's tasks.

use openraft::OptionalSend;
use openraft::rt::{AsyncRuntime, Select2, Select3, Select4};
use openraft_rt_tokio::TokioRuntime;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::cell::Cell;
use std::future::Future;
use std::io;
use std::time::Duration;

tokio::task_local! {
    static SEED: Cell<u64>;
}

/// SplitMix64's output function over `seed + gamma`: distinct gammas give independent sequences.
fn mix(seed: u64, gamma: u64) -> u64 {
    let z = seed.wrapping_add(gamma);
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const ADVANCE: u64 = 0x6a09_e667_f3bc_c908;
const FORK: u64 = 0x9e37_79b9_7f4a_7c15;

/// The scope's current seed, advanced; `None` outside a scope.
fn next_seed() -> Option<u64> {
    SEED.try_with(|s| {
        let seed = s.get();
        s.set(mix(seed, ADVANCE));
        seed
    })
    .ok()
}

/// Runs `future` with Raft's randomness seeded from `seed` (for simulation; see the module docs).
pub async fn with_seed<F: Future>(seed: u64, future: F) -> F::Output {
    SEED.scope(Cell::new(seed), future).await
}

/// Tokio, with seedable randomness.
#[derive(Debug)]
pub struct CairnRuntime {
    inner: TokioRuntime,
}

impl AsyncRuntime for CairnRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = SmallRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        match next_seed() {
            Some(seed) => tokio::spawn(SEED.scope(Cell::new(mix(seed, FORK)), future)),
            None => tokio::spawn(future),
        }
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn select2<A, B>(a: A, b: B) -> impl Future<Output = Select2<A::Output, B::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
    {
        TokioRuntime::select2(a, b)
    }

    fn select3<A, B, C>(
        a: A,
        b: B,
        c: C,
    ) -> impl Future<Output = Select3<A::Output, B::Output, C::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
        C: Future + OptionalSend,
    {
        TokioRuntime::select3(a, b, c)
    }

    fn select4<A, B, C, D>(
        a: A,
        b: B,
        c: C,
        d: D,
    ) -> impl Future<Output = Select4<A::Output, B::Output, C::Output, D::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
        C: Future + OptionalSend,
        D: Future + OptionalSend,
    {
        TokioRuntime::select4(a, b, c, d)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> SmallRng {
        match next_seed() {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => rand::make_rng(),
        }
    }

    type Mpsc = <TokioRuntime as AsyncRuntime>::Mpsc;
    type Watch = <TokioRuntime as AsyncRuntime>::Watch;
    type Oneshot = <TokioRuntime as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::Mutex<T>;

    fn new(threads: usize) -> Self {
        CairnRuntime { inner: TokioRuntime::new(threads) }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.inner.block_on(future)
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        TokioRuntime::spawn_blocking(f)
    }
}
