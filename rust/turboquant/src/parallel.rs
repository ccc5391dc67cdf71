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
//! it with `os.register_at_fork`). A child never blocks on the pool's lock (it may have been
//! held by another thread at the moment of the fork): if it cannot take it, the call runs on
//! a pool of its own. (huggingface/tokenizers instead turns parallelism off in a forked child;
//! here the child keeps its thread count.)

use crate::error::{Error, Result};
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, TryLockError};

/// The pool and the process it was started in.
struct Pool {
    pool: Arc<ThreadPool>,
    pid: u32,
}

static POOL: RwLock<Option<Pool>> = RwLock::new(None);
/// The process id of the pool in `POOL` (0: none yet), readable without the lock: a forked
/// child must not block on `POOL`, whose state it inherits (held, if another thread of the
/// parent held it at the moment of the fork).
static POOL_PID: AtomicU32 = AtomicU32::new(0);
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
    let pid = std::process::id();
    let mut guard = if POOL_PID.load(Ordering::Acquire) == pid {
        POOL.write().unwrap_or_else(|e| e.into_inner())
    } else {
        match POOL.try_write() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            // a forked child whose lock was inherited held: the new setting applies to the
            // pools started per call (see `current`)
            Err(TryLockError::WouldBlock) => return Ok(()),
        }
    };
    let old = guard.replace(Pool { pool, pid });
    POOL_PID.store(pid, Ordering::Release);
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
/// Safe to call at any time (a pool of this process is kept); never blocks.
pub fn after_fork_in_child() {
    let pid = std::process::id();
    if POOL_PID.load(Ordering::Acquire) == pid {
        return;
    }
    if let Ok(mut guard) = POOL.try_write() {
        if guard.as_ref().is_some_and(|p| p.pid != pid) {
            abandon_if_inherited(guard.take());
            POOL_PID.store(0, Ordering::Release);
        }
    }
}

/// The pool of this process, started on first use (or after a fork); `None` only if no
/// thread can be started, in which case work runs on the calling thread.
fn current() -> Option<Arc<ThreadPool>> {
    let pid = std::process::id();
    if POOL_PID.load(Ordering::Acquire) == pid {
        let guard = POOL.read().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = guard.as_ref().filter(|p| p.pid == pid) {
            return Some(Arc::clone(&p.pool));
        }
    }
    // First use in this process (or in a forked child): never block on the lock here.
    let fresh = || {
        build(REQUESTED.load(Ordering::Relaxed))
            .or_else(|_| build(1))
            .ok()
    };
    let mut guard = match POOL.try_write() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
        // another thread is starting the pool, or (after a fork) the lock was inherited held:
        // this call gets a pool of its own
        Err(TryLockError::WouldBlock) => return fresh(),
    };
    if let Some(p) = guard.as_ref().filter(|p| p.pid == pid) {
        return Some(Arc::clone(&p.pool));
    }
    let pool = fresh()?;
    let old = guard.replace(Pool {
        pool: Arc::clone(&pool),
        pid,
    });
    POOL_PID.store(pid, Ordering::Release);
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

/// `f` over every item, in order, run by the calling thread and up to `num_threads() − 1` pool
/// helpers that take items from a shared counter. The caller starts at once instead of
/// sleeping through a hand-off to the pool (a sleeping worker wakes 60-70 µs late), so short
/// calls, such as one decode step's attention per layer, do not pay for it; one item, or one
/// thread, runs on the caller alone. `init` makes each thread's scratch state.
pub fn map_shared<T, S, R, I, F>(items: &[T], init: I, f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    I: Fn() -> S + Sync,
    F: Fn(&mut S, &T) -> R + Sync,
{
    let next = AtomicUsize::new(0);
    let work = || {
        let mut state = init();
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            match items.get(i) {
                Some(item) => done.push((i, f(&mut state, item))),
                None => return done,
            }
        }
    };
    let helpers = num_threads()
        .saturating_sub(1)
        .min(items.len().saturating_sub(1));
    let mut parts: Vec<Vec<(usize, R)>> = (0..helpers).map(|_| Vec::new()).collect();
    let mine = if helpers == 0 {
        work()
    } else {
        in_place_scope(|s| {
            for slot in parts.iter_mut() {
                s.spawn(|_| *slot = work());
            }
            work()
        })
    };
    let mut out: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    for (i, r) in mine.into_iter().chain(parts.into_iter().flatten()) {
        out[i] = Some(r);
    }
    out.into_iter().flatten().collect()
}

/// Rows per parallel task for `n` rows: large enough to amortize scheduling, small enough to balance.
pub fn rows_per_task(n: usize) -> usize {
    (n / (num_threads() * 8).max(1)).clamp(16, 4096)
}

#[cfg(test)]
mod map_shared_tests {
    use super::map_shared;

    #[test]
    fn every_item_runs_once_and_results_keep_the_order() {
        let items: Vec<usize> = (0..997).collect();
        let out = map_shared(
            &items,
            || 0usize,
            |seen, &x| {
                *seen += 1;
                x * 3 + 1
            },
        );
        assert_eq!(out, items.iter().map(|x| x * 3 + 1).collect::<Vec<_>>());
        assert_eq!(map_shared(&items[..1], || (), |_, &x| x), vec![0]);
        assert!(map_shared(&items[..0], || (), |_, &x| x).is_empty());
    }
}
