//! Thread-count control for the crate's rayon work, and fork safety.
//!
//! All parallel work of the crate runs in one dedicated pool owned by this module (never
//! rayon's global pool), sized by [`set_num_threads`] or, by default, like rayon's global pool
//! (`RAYON_NUM_THREADS` or the core count).
//!
//! **Fork safety.** `fork()` copies only the calling thread: in a child process the pool's
//! worker threads do not exist, and work handed to them would wait forever (the hang of a
//! forked `DataLoader` worker or `multiprocessing` "fork" child after the parent used the
//! library). The pool remembers the process id it was started in; a process with another id
//! (a forked child) never touches the inherited pool: it is abandoned (leaked, since dropping
//! it would signal threads that are not there) and a fresh pool of the same size is started
//! on first use. [`after_fork_in_child`] does the same eagerly (the Python package registers
//! it with `os.register_at_fork`).

use crate::error::{Error, Result};
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// The pool and the process it was started in.
struct Pool {
    pool: Arc<ThreadPool>,
    pid: u32,
}

static POOL: RwLock<Option<Pool>> = RwLock::new(None);
/// Threads requested by [`set_num_threads`] (0: rayon's default).
static REQUESTED: AtomicUsize = AtomicUsize::new(0);

fn build(n: usize) -> Result<Arc<ThreadPool>> {
    ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("turboquant-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| Error::InvalidParameter(format!("cannot start {n} threads: {e}")))
}

/// Runs all later work of this crate on `n` threads (`0`: rayon's default count).
pub fn set_num_threads(n: usize) -> Result<()> {
    let pool = build(n)?;
    REQUESTED.store(n, Ordering::Relaxed);
    let old = POOL
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .replace(Pool {
            pool,
            pid: std::process::id(),
        });
    abandon_if_inherited(old);
    Ok(())
}

/// Threads the crate's parallel work uses now.
pub fn num_threads() -> usize {
    current().map_or(1, |p| p.current_num_threads())
}

/// Drops a pool started in this process; leaks one inherited through `fork` (its threads do
/// not exist here, so it must never be used or dropped).
fn abandon_if_inherited(old: Option<Pool>) {
    if let Some(p) = old {
        if p.pid != std::process::id() {
            std::mem::forget(p.pool);
        }
    }
}

/// Forgets a pool inherited through `fork` now, so the next parallel call starts a fresh one.
/// Safe to call at any time (a pool of this process is kept).
pub fn after_fork_in_child() {
    let pid = std::process::id();
    let mut guard = POOL.write().unwrap_or_else(|e| e.into_inner());
    if guard.as_ref().is_some_and(|p| p.pid != pid) {
        abandon_if_inherited(guard.take());
    }
}

/// The pool of this process, started on first use (or after a fork); `None` only if no
/// thread can be started, in which case work runs on the calling thread.
fn current() -> Option<Arc<ThreadPool>> {
    let pid = std::process::id();
    {
        let guard = POOL.read().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = guard.as_ref().filter(|p| p.pid == pid) {
            return Some(Arc::clone(&p.pool));
        }
    }
    let mut guard = POOL.write().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = guard.as_ref().filter(|p| p.pid == pid) {
        return Some(Arc::clone(&p.pool));
    }
    let pool = build(REQUESTED.load(Ordering::Relaxed))
        .or_else(|_| build(1))
        .ok()?;
    let old = guard.replace(Pool {
        pool: Arc::clone(&pool),
        pid,
    });
    abandon_if_inherited(old);
    Some(pool)
}

/// Runs `f` inside the crate's pool, so that rayon calls in it use that pool.
pub fn install<R: Send, F: FnOnce() -> R + Send>(f: F) -> R {
    match current() {
        Some(p) => p.install(f),
        None => f(),
    }
}

/// Runs `f` on the calling thread with a scope whose spawned jobs run in the crate's pool:
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
