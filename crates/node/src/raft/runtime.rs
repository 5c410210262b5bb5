//! openraft's async runtime, with randomness that a simulation can seed.
//!
//! openraft 0.9 draws its election timeouts from `AsyncRuntime::thread_rng()`.
//! With tokio's default runtime that is the OS-seeded `rand::thread_rng()`, so
//! two runs of one simulation seed elect differently and cannot be replayed.
//! [`SeededRuntime`] is tokio in every respect except that its RNG reads from a
//! thread-local generator the simulator seeds with [`seed_thread_rng`]; a real
//! node never seeds it and gets the OS-seeded generator.

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend, TokioRuntime};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

thread_local! {
    static SEEDED_RNG: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// Make every later `SeededRuntime::thread_rng()` on this thread draw from a
/// generator seeded with `seed`. The simulator calls it once per run; all
/// simulated hosts share its one thread, so their draws interleave in the
/// simulator's deterministic order.
pub fn seed_thread_rng(seed: u64) {
    SEEDED_RNG.with(|rng| *rng.borrow_mut() = Some(StdRng::seed_from_u64(seed)));
}

/// Forget the seed on this thread (back to OS randomness).
pub fn unseed_thread_rng() {
    SEEDED_RNG.with(|rng| *rng.borrow_mut() = None);
}

/// The RNG handed to openraft: the seeded generator when there is one.
#[derive(Debug, Default, Clone, Copy)]
pub struct RuntimeRng;

impl RngCore for RuntimeRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }

    fn next_u64(&mut self) -> u64 {
        SEEDED_RNG.with(|rng| match rng.borrow_mut().as_mut() {
            Some(seeded) => seeded.next_u64(),
            None => rand::thread_rng().next_u64(),
        })
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// Tokio, with [`RuntimeRng`] as its random source.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SeededRuntime;

impl AsyncRuntime for SeededRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = RuntimeRng;
    type OneshotSender<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError = <TokioRuntime as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        RuntimeRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        TokioRuntime::oneshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn a_seed_replays_the_same_draws() {
        seed_thread_rng(7);
        let first: Vec<u64> = (0..5)
            .map(|_| SeededRuntime::thread_rng().gen_range(150..300))
            .collect();
        seed_thread_rng(7);
        let second: Vec<u64> = (0..5)
            .map(|_| SeededRuntime::thread_rng().gen_range(150..300))
            .collect();
        unseed_thread_rng();
        assert_eq!(first, second);
    }
}
