//! Work shared over scoped threads: workers take the next unit from a shared counter until none
//! is left. One thread runs on the caller's own, with no thread started.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs `worker` on `threads` threads (at least one) and waits for all of them. A worker that
/// panicked has already printed why; its panic is passed on whole.
pub(crate) fn run_workers(threads: usize, worker: impl Fn() + Sync) {
    if threads <= 1 {
        return worker();
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(&worker)).collect();
        for h in handles {
            h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        }
    });
}

/// `f(0..n)` on up to `threads` threads, results in order.
pub(crate) fn parallel_map<T: Send>(n: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    if threads <= 1 || n <= 1 {
        return (0..n).map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let done = std::sync::Mutex::new(Vec::with_capacity(n));
    run_workers(threads.min(n), || {
        let mut mine = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            mine.push((i, f(i)));
        }
        done.lock().unwrap_or_else(|e| e.into_inner()).append(&mut mine);
    });
    let mut done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, v)| v).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_their_order_on_any_thread_count() {
        for threads in [0, 1, 2, 7] {
            for n in [0, 1, 5, 100] {
                assert_eq!(parallel_map(n, threads, |i| i * 3), (0..n).map(|i| i * 3).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn one_thread_runs_on_the_callers() {
        let me = std::thread::current().id();
        run_workers(1, || assert_eq!(std::thread::current().id(), me));
        let ids = parallel_map(3, 1, |_| std::thread::current().id());
        assert!(ids.iter().all(|&id| id == me));
    }
}
