//! Measurements for `odin bench`: decode and prefill speed, the machine's
//! own memory bandwidth (for the roofline), and peak resident memory.

use std::time::Instant;

use crate::model::Decoder;

/// Speed of one shard configuration, medians over runs.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Speed {
    /// Prompt tokens per second (one forward over the whole prompt).
    pub prefill_tok_s: f64,
    /// Generated tokens per second (one forward per token, after the prompt).
    pub decode_tok_s: f64,
}

/// The median (upper middle for even lengths) of `v`.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A fixed pseudo-random prompt of `n` tokens inside the vocabulary.
pub fn prompt(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i as u64 * 2_654_435_761 + 12_345) % vocab as u64) as u32).collect()
}

/// Time prefill of `prompt_len` tokens and decode of `decode_len` tokens, `runs` times each.
/// Any [`Decoder`] can be measured: the int8 engine, and the trainer's f32 reference beside it.
pub fn measure<D: Decoder>(
    model: &D,
    prompt_len: usize,
    decode_len: usize,
    runs: usize,
) -> std::result::Result<Speed, D::Error> {
    let ids = prompt(prompt_len.max(1), model.vocab_size());
    let (mut pre, mut dec) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        let mut st = model.start()?;
        let t = Instant::now();
        let mut logits = model.next_logits(&ids, &mut st)?;
        pre.push(ids.len() as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        for _ in 0..decode_len {
            let tok = crate::math::argmax(&logits) as u32;
            logits = model.next_logits(&[tok], &mut st)?;
        }
        dec.push(decode_len as f64 / t.elapsed().as_secs_f64());
    }
    Ok(Speed { prefill_tok_s: median(pre), decode_tok_s: median(dec) })
}

/// Read bandwidth in bytes per second over a 512 MiB buffer (past most last-level caches),
/// with `threads` readers (each sums its own slice), median of 5 passes.
///
/// Each pass is read twice, plainly and asking for the lines ahead as the kernels do, and the
/// faster counts: the kernels stream with software prefetch, so the bound they are measured
/// against should have it too (+10% on one host). A model small enough to stay in the
/// last-level cache between tokens can still beat this memory bound.
pub fn read_bandwidth(threads: usize) -> f64 {
    const BYTES: usize = 512 << 20;
    // On huge pages where the system has them, as the weights are (crate::pages): the roofline
    // is what the memory can give, not what 4 KiB pages let through.
    let fill = |i: usize| i as u64;
    let huge = crate::pages::HugeBuf::from_fn(BYTES / 8, fill);
    let own: Vec<u64>;
    let buf: &[u64] = match &huge {
        Some(b) => b,
        None => {
            own = (0..BYTES / 8).map(fill).collect();
            &own
        }
    };
    let threads = threads.max(1);
    let chunk = buf.len().div_ceil(threads);
    let pass = |sum: fn(&[u64]) -> u64| {
        let t = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = buf.chunks(chunk).map(|part| s.spawn(move || sum(part))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).fold(0u64, u64::wrapping_add)
        });
        std::hint::black_box(total);
        BYTES as f64 / t.elapsed().as_secs_f64()
    };
    median((0..5).map(|_| pass(sum_plain).max(pass(sum_prefetched))).collect())
}

fn sum_plain(part: &[u64]) -> u64 {
    part.iter().fold(0u64, |a, &x| a.wrapping_add(x))
}

/// [`sum_plain`], asking for the cache line as far ahead as the kernels do.
fn sum_prefetched(part: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let ahead = crate::kernels::x86::PREFETCH / 8;
        let mut a = 0u64;
        for (i, line) in part.chunks(8).enumerate() {
            if let Some(next) = part.get(i * 8 + ahead) {
                // SAFETY: a prefetch only hints the cache; the address is inside `part`.
                unsafe { _mm_prefetch::<_MM_HINT_T0>((next as *const u64).cast()) };
            }
            a = line.iter().fold(a, |a, &x| a.wrapping_add(x));
        }
        a
    }
    #[cfg(not(target_arch = "x86_64"))]
    sum_plain(part)
}

/// Peak resident memory of this process so far, in bytes (Linux; `None` elsewhere).
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
