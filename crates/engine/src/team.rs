//! A small team of worker threads that stay awake between matrix products.
//!
//! Decoding one token runs about a hundred short products in sequence. A
//! general pool (rayon) lets idle workers sleep, and waking one costs tens of
//! microseconds, which on a 100M model ate the whole gain of a second core.
//! Here workers spin on an epoch counter for a short while after each job
//! (about as long as the gap between two products), then park until the next
//! one. The caller always takes part 0 of every job itself.
//!
//! Which thread computes which part never changes a result: each part writes
//! only its own rows.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A job: called once per part index, from several threads at once.
type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped once per job; workers watch it.
    epoch: AtomicUsize,
    /// Parts finished by workers in the current job.
    done: AtomicUsize,
    stop: AtomicBool,
    /// Set when a worker's part panicked (a bug); `run` re-raises it on the caller.
    failed: AtomicBool,
    /// The current job, valid while `run` waits for `done`.
    job: std::sync::Mutex<Option<&'static Job>>,
}

/// Worker threads for splitting one product across cores.
pub struct Team {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_micros(200);

impl Team {
    /// A team of `threads` (the caller plus `threads - 1` workers).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            job: std::sync::Mutex::new(None),
        });
        let mut workers = Vec::new();
        for part in 1..threads.max(1) {
            let sh = Arc::clone(&shared);
            workers.push(std::thread::Builder::new().name(format!("odin-engine-{part}")).spawn(move || {
                let mut seen = 0;
                loop {
                    let t = Instant::now();
                    let mut spins = 0u32;
                    while sh.epoch.load(Ordering::Acquire) == seen && !sh.stop.load(Ordering::Acquire) {
                        spins = spins.wrapping_add(1);
                        if spins.is_multiple_of(64) && t.elapsed() > SPIN {
                            std::thread::park_timeout(Duration::from_millis(5));
                        } else {
                            std::hint::spin_loop();
                        }
                    }
                    if sh.stop.load(Ordering::Acquire) {
                        return;
                    }
                    seen = sh.epoch.load(Ordering::Acquire);
                    let job = sh.job.lock().ok().and_then(|j| *j);
                    if let Some(job) = job {
                        // A panic must still count as done, or the caller would wait forever.
                        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(part))).is_ok();
                        if !ok {
                            sh.failed.store(true, Ordering::Release);
                        }
                    }
                    sh.done.fetch_add(1, Ordering::AcqRel);
                }
            })?);
        }
        Ok(Self { shared, workers })
    }

    /// Parts per job: the caller plus the workers.
    pub fn size(&self) -> usize {
        self.workers.len() + 1
    }

    /// Run `f(part)` for every part in `0..size()`, returning when all are done.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync + '_)) {
        if self.workers.is_empty() {
            f(0);
            return;
        }
        // SAFETY: the reference is published to the workers only until every one of
        // them has reported done below, and `f` outlives this call.
        let job: &'static Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static Job>(f) };
        if let Ok(mut j) = self.shared.job.lock() {
            *j = Some(job);
        }
        self.shared.done.store(0, Ordering::Release);
        self.shared.epoch.fetch_add(1, Ordering::AcqRel);
        for w in &self.workers {
            w.thread().unpark();
        }
        // Waits for the workers even if `f(0)` panics, so `f` is never used after this returns.
        let _wait = WaitForWorkers(self);
        f(0);
    }
}

/// Blocks until every worker has finished the current job, then retires the job.
struct WaitForWorkers<'a>(&'a Team);

impl Drop for WaitForWorkers<'_> {
    fn drop(&mut self) {
        let sh = &self.0.shared;
        while sh.done.load(Ordering::Acquire) < self.0.workers.len() {
            std::hint::spin_loop();
        }
        if let Ok(mut j) = sh.job.lock() {
            *j = None;
        }
        if sh.failed.swap(false, Ordering::AcqRel) && !std::thread::panicking() {
            panic!("an engine worker thread panicked while computing a product part");
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for w in &self.workers {
            w.thread().unpark();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_per_job() {
        let team = Team::new(3).unwrap();
        let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..1000 {
            team.run(&|p| {
                hits[p].fetch_add(1, Ordering::Relaxed);
            });
        }
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1000));
    }

    #[test]
    fn a_worker_panic_reaches_the_caller_instead_of_hanging() {
        let team = Team::new(2).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            team.run(&|p| {
                if p == 1 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        // The team still works afterwards.
        let n = AtomicUsize::new(0);
        team.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }
}
