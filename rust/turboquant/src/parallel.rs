//! Thread-count control for the crate's rayon work.
//!
//! By default work runs on rayon's global pool (sized by `RAYON_NUM_THREADS` or the core
//! count). [`set_num_threads`] switches to a dedicated pool of that many threads; `0` goes back.

use crate::error::{Error, Result};
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::{Arc, RwLock};

static POOL: RwLock<Option<Arc<ThreadPool>>> = RwLock::new(None);

/// Runs all later work of this crate on `n` threads (`0`: rayon's global pool).
pub fn set_num_threads(n: usize) -> Result<()> {
    let pool = if n == 0 {
        None
    } else {
        Some(Arc::new(
            ThreadPoolBuilder::new()
                .num_threads(n)
                .thread_name(|i| format!("turboquant-{i}"))
                .build()
                .map_err(|e| Error::InvalidParameter(format!("cannot start {n} threads: {e}")))?,
        ))
    };
    *POOL.write().unwrap_or_else(|e| e.into_inner()) = pool;
    Ok(())
}

/// Threads the crate's parallel work uses now.
pub fn num_threads() -> usize {
    match current() {
        Some(p) => p.current_num_threads(),
        None => rayon::current_num_threads(),
    }
}

fn current() -> Option<Arc<ThreadPool>> {
    POOL.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Runs `f` inside the configured pool, so that rayon calls in it use that pool.
pub fn install<R: Send, F: FnOnce() -> R + Send>(f: F) -> R {
    match current() {
        Some(p) => p.install(f),
        None => f(),
    }
}

/// Runs `f` on the calling thread with a scope whose spawned jobs run in the configured pool:
/// the caller works on its share instead of sleeping through a hand-off (and waits for the
/// spawned jobs at the end).
pub fn in_place_scope<'s, R, F: FnOnce(&rayon::Scope<'s>) -> R>(f: F) -> R {
    match current() {
        Some(p) => p.in_place_scope(f),
        None => rayon::in_place_scope(f),
    }
}

/// Rows per parallel task for `n` rows: large enough to amortize scheduling, small enough to balance.
pub fn rows_per_task(n: usize) -> usize {
    (n / (num_threads() * 8).max(1)).clamp(16, 4096)
}
