//! How the engine runs its matrix products: the kernel, the thread team, and
//! the quantization of activations on the way in. Neither the kernel nor the
//! thread count changes a single output bit.

use crate::error::{EngineError, Result};
use crate::kernels::Kernel;
use crate::quant::{QMatrix, QVec, TILE};

/// How the engine runs: which kernel and how many threads. Neither changes a single output bit.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Worker threads for the matrix products (0: one per core).
    pub threads: usize,
    /// Kernel; `None` picks the fastest this machine supports (or `ODIN_KERNEL`).
    pub kernel: Option<Kernel>,
    /// Products with fewer multiply-adds stay on the calling thread, where waking
    /// workers would cost more than they save. Tests set 0 to split everything.
    pub parallel_min_macs: usize,
}

impl Options {
    /// `threads` workers and the fastest kernel.
    pub fn threads(threads: usize) -> Self {
        Self { threads, ..Self::default() }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self { threads: 1, kernel: None, parallel_min_macs: 1 << 18 }
    }
}

/// Runs the matrix products: a kernel and, with the `threads` feature, a team of threads.
pub struct Exec {
    kernel: Kernel,
    threads: usize,
    #[cfg(feature = "threads")]
    team: Option<crate::team::Team>,
    #[cfg(feature = "threads")]
    parallel_min_macs: usize,
}

impl Exec {
    /// Set up `opts`.
    pub fn new(opts: Options) -> Result<Self> {
        let kernel = match opts.kernel {
            Some(k) if !k.is_supported() => {
                return Err(EngineError::BadInput(format!("kernel {} is not supported on this machine", k.name())))
            }
            Some(k) => k,
            None => Kernel::detect()?,
        };
        #[cfg(feature = "threads")]
        {
            let threads = match opts.threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            };
            let team = if threads > 1 {
                Some(
                    crate::team::Team::new(threads)
                        .map_err(|e| EngineError::BadInput(format!("cannot start {threads} threads: {e}")))?,
                )
            } else {
                None
            };
            Ok(Self { kernel, threads, team, parallel_min_macs: opts.parallel_min_macs })
        }
        #[cfg(not(feature = "threads"))]
        Ok(Self { kernel, threads: 1 })
    }

    /// The kernel in use.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Threads in use.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Each row of `cols` values of `x`, quantized for the kernels.
    ///
    /// Compiled for the kernel's instruction set like [`Shard::block`]: as a plain call it ran on
    /// SSE2 one value at a time, ~13% of odin-tiny's decode. A maximum and a rounding are the
    /// same in any lane width, so the codes and scales are too.
    #[inline(always)]
    fn quantize(&self, x: &[f32], cols: usize) -> Vec<QVec> {
        #[inline(always)]
        fn rows(x: &[f32], cols: usize) -> Vec<QVec> {
            // A loop, not an iterator chain: an adapter's `fold` stays a separate function
            // compiled without the caller's features.
            let mut out = Vec::with_capacity(x.len() / cols);
            for r in x.chunks_exact(cols) {
                out.push(QVec::from_f32(r));
            }
            out
        }
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
            unsafe fn avx512(x: &[f32], cols: usize) -> Vec<QVec> {
                rows(x, cols)
            }
            #[target_feature(enable = "avx2")]
            unsafe fn avx2(x: &[f32], cols: usize) -> Vec<QVec> {
                rows(x, cols)
            }
            match self.kernel {
                // SAFETY: `Exec::new` only picks a kernel this CPU supports, and each kernel's
                // features include the ones enabled here.
                Kernel::Avx512Vnni => return unsafe { avx512(x, cols) },
                Kernel::Avx2 => return unsafe { avx2(x, cols) },
                _ => {}
            }
        }
        rows(x, cols)
    }

    /// `out[t*rows + r] = m[r] · xs[t]` for every token t.
    fn matmul(&self, m: &QMatrix, xs: &[QVec], out: &mut [f32]) {
        let rows = m.rows();
        // Tiles [from, to) for every token, into `res` laid out [tile][token].
        let run = |from: usize, to: usize| -> Vec<[f32; TILE]> {
            let mut res = vec![[0f32; TILE]; (to - from) * xs.len()];
            for (t, outs) in (from..to).zip(res.chunks_exact_mut(xs.len().max(1))) {
                self.kernel.tile_many(m, t, xs, outs);
            }
            res
        };
        let scatter = |from: usize, res: &[[f32; TILE]], out: &mut [f32]| {
            for (k, o) in res.iter().enumerate() {
                let (t, tok) = (from + k / xs.len(), k % xs.len());
                let n = TILE.min(rows - t * TILE);
                out[tok * rows + t * TILE..tok * rows + t * TILE + n].copy_from_slice(&o[..n]);
            }
        };
        #[cfg(feature = "threads")]
        if let Some(team) = &self.team {
            if m.rows() * m.cols() * xs.len() >= self.parallel_min_macs {
                // One contiguous run of tiles per thread: rows are split between threads and
                // each row is computed whole by one of them, so the thread count cannot change
                // a bit of the result.
                let per = m.tiles().div_ceil(team.size());
                let parts: Vec<std::sync::Mutex<Vec<[f32; TILE]>>> =
                    (0..team.size()).map(|_| std::sync::Mutex::new(Vec::new())).collect();
                team.run(&|i| {
                    let res = run((i * per).min(m.tiles()), ((i + 1) * per).min(m.tiles()));
                    if let Ok(mut slot) = parts[i].lock() {
                        *slot = res;
                    }
                });
                for (i, part) in parts.into_iter().enumerate() {
                    let res = part.into_inner().unwrap_or_default();
                    scatter((i * per).min(m.tiles()), &res, out);
                }
                return;
            }
        }
        scatter(0, &run(0, m.tiles()), out);
    }

    /// Quantize each row of `x` ([T, cols]) and multiply: returns [T, rows].
    // Inlined so that each block's activations are quantized with the block's instruction set.
    #[inline(always)]
    pub(crate) fn linear(&self, m: &QMatrix, x: &[f32]) -> Vec<f32> {
        let xs = self.quantize(x, m.cols());
        let mut out = vec![0f32; xs.len() * m.rows()];
        self.matmul(m, &xs, &mut out);
        out
    }

    /// [`Exec::linear`] for rows of `width` values, zero-padded to the matrix's stored
    /// columns when `width` is not a multiple of 32 (see [`crate::weights::padded_cols`]).
    #[inline(always)]
    pub(crate) fn linear_padded(&self, m: &QMatrix, x: &[f32], width: usize) -> Vec<f32> {
        if width == m.cols() {
            return self.linear(m, x);
        }
        let cols = m.cols();
        let mut rows = vec![0f32; x.len() / width * cols];
        for (r, s) in rows.chunks_exact_mut(cols).zip(x.chunks_exact(width)) {
            r[..width].copy_from_slice(s);
        }
        let xs = self.quantize(&rows, cols);
        let mut out = vec![0f32; xs.len() * m.rows()];
        self.matmul(m, &xs, &mut out);
        out
    }
}
