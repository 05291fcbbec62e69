//! The tensor codec: hidden states (and session states) as they travel between hops.
//!
//! On the wire a tensor is a dtype byte, `u32` rows, `u32` cols, then its data: f32
//! little-endian, or per row, for each block of [`WIRE_BLOCK`] values, an f16 scale then the
//! int8 codes ([`odin_format::int8`], the quantizer the engine's weights use too). Rows and
//! width are capped before the data is taken, and every value (or scale) must be finite.

use half::f16;
use odin_format::int8;

use crate::codec::{Reader, Writer};
use crate::error::{ProtoError, Result};

/// Most rows of any tensor, and most tokens one step may carry (prefill of a long prompt); a
/// session state's rows count too (12 blocks with head size 64 are 12 × 66 = 792 rows).
pub const MAX_TOKENS: usize = 8192;
/// Widest hidden state a tensor may have.
pub const MAX_WIDTH: usize = 16384;
/// Values per int8 block on the wire (one f16 scale each).
pub const WIRE_BLOCK: usize = int8::BLOCK;

/// How hidden states travel between hops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dtype {
    /// int8 codes in blocks of 32 along each row, one f16 scale per block (the default: ~3.8x smaller).
    #[default]
    Q8,
    /// Plain little-endian f32 (lossless).
    F32,
}

impl Dtype {
    /// The byte that names it on the wire.
    pub fn code(self) -> u8 {
        match self {
            Dtype::F32 => 0,
            Dtype::Q8 => 1,
        }
    }

    /// The dtype a wire byte names.
    pub fn from_code(c: u8) -> Result<Self> {
        match c {
            0 => Ok(Dtype::F32),
            1 => Ok(Dtype::Q8),
            _ => Err(ProtoError::Malformed(format!("unknown tensor dtype {c}"))),
        }
    }

    /// The name used on the command line and in the API.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Q8 => "int8",
        }
    }

    /// Parse a command-line name (`int8` or `f32`).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "int8" | "q8" => Ok(Dtype::Q8),
            "f32" => Ok(Dtype::F32),
            _ => Err(ProtoError::Malformed(format!("unknown wire dtype {s:?}; use int8 or f32"))),
        }
    }
}

/// Hidden states [rows, cols] as they travel: f32, or int8 blocks with f16 scales.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Tokens.
    pub rows: usize,
    /// Hidden width.
    pub cols: usize,
    /// How `data` is encoded.
    pub dtype: Dtype,
    /// The encoded values (f32 LE, or per row: for each block of 32, an f16 scale then the codes).
    pub data: Vec<u8>,
}

/// Bytes of one int8 row: a 2-byte scale per block, one byte per value.
fn q8_row_bytes(cols: usize) -> usize {
    cols.div_ceil(WIRE_BLOCK) * 2 + cols
}

impl Tensor {
    /// Encode `values` ([rows, cols], row-major) as `dtype`. Refuses NaN and infinity, and
    /// (for int8) a block too large for an f16 scale.
    pub fn encode(values: &[f32], cols: usize, dtype: Dtype) -> Result<Self> {
        if cols == 0 || !values.len().is_multiple_of(cols) {
            return Err(ProtoError::Malformed(format!("{} values are not whole rows of {cols}", values.len())));
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(ProtoError::Malformed("hidden state holds NaN or infinity".into()));
        }
        let rows = values.len() / cols;
        let data = match dtype {
            Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::Q8 => {
                let mut out = Vec::with_capacity(rows * q8_row_bytes(cols));
                let mut codes = [0i8; WIRE_BLOCK];
                for row in values.chunks_exact(cols) {
                    // Only a row's last block may be short.
                    for block in row.chunks(WIRE_BLOCK) {
                        let codes = &mut codes[..block.len()];
                        let scale = int8::quantize_block(block, codes);
                        if !scale.is_finite() {
                            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                            return Err(ProtoError::Malformed(format!(
                                "a value of magnitude {amax} does not fit the int8 wire's f16 scales; use the f32 wire"
                            )));
                        }
                        out.extend_from_slice(&scale.to_bits().to_le_bytes());
                        out.extend(codes.iter().map(|&q| q as u8));
                    }
                }
                out
            }
        };
        Ok(Self { rows, cols, dtype, data })
    }

    /// Check the byte count and that every value is finite, without allocating
    /// (run on every tensor read from the network).
    pub fn check(&self) -> Result<()> {
        let want = match self.dtype {
            Dtype::F32 => self.rows * self.cols * 4,
            Dtype::Q8 => self.rows * q8_row_bytes(self.cols),
        };
        if self.data.len() != want {
            return Err(ProtoError::Malformed(format!(
                "{} tensor of {}x{} needs {want} bytes, not {}",
                self.dtype.name(),
                self.rows,
                self.cols,
                self.data.len()
            )));
        }
        match self.dtype {
            Dtype::F32 if !self.f32_values().all(f32::is_finite) => {
                Err(ProtoError::Malformed("hidden state holds NaN or infinity".into()))
            }
            Dtype::Q8 if !self.q8_blocks().all(|(s, _)| s.is_finite()) => {
                Err(ProtoError::Malformed("int8 tensor has a NaN or infinite scale".into()))
            }
            _ => Ok(()),
        }
    }

    /// The values as f32 [rows, cols].
    pub fn decode(&self) -> Result<Vec<f32>> {
        self.check()?;
        Ok(match self.dtype {
            Dtype::F32 => self.f32_values().collect(),
            Dtype::Q8 => {
                let mut out = Vec::with_capacity(self.rows * self.cols);
                for (s, codes) in self.q8_blocks() {
                    out.extend(codes.iter().map(|&q| int8::dequantize(q as i8, s)));
                }
                out
            }
        })
    }

    fn f32_values(&self) -> impl Iterator<Item = f32> + '_ {
        self.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Each int8 block in order: its scale and its codes. Only the last block of a row may be short,
    /// so block i of a row starts at i * (2 + 32).
    fn q8_blocks(&self) -> impl Iterator<Item = (f32, &[u8])> + '_ {
        let cols = self.cols;
        self.data.chunks_exact(q8_row_bytes(cols).max(1)).flat_map(move |row| {
            (0..cols.div_ceil(WIRE_BLOCK)).map(move |i| {
                let p = i * (2 + WIRE_BLOCK);
                let k = (cols - i * WIRE_BLOCK).min(WIRE_BLOCK);
                (f16::from_bits(u16::from_le_bytes([row[p], row[p + 1]])).to_f32(), &row[p + 2..p + 2 + k])
            })
        })
    }
}

impl Writer {
    /// A tensor: dtype, rows, cols, data.
    pub fn tensor(&mut self, t: &Tensor) {
        self.u8(t.dtype.code());
        self.u32(t.rows as u32);
        self.u32(t.cols as u32);
        self.raw(&t.data);
    }
}

impl Reader<'_> {
    /// A tensor of either dtype, checked (caps, byte count, finite values).
    pub fn tensor(&mut self) -> Result<Tensor> {
        let dtype = Dtype::from_code(self.u8("tensor dtype")?)?;
        self.tensor_body(dtype)
    }

    /// A tensor that must be exact, such as a session state (`what` names it): anything but
    /// f32 is refused by its dtype before the shape is even read.
    pub fn f32_tensor(&mut self, what: &str) -> Result<Tensor> {
        let dtype = Dtype::from_code(self.u8("state dtype")?)?;
        if dtype != Dtype::F32 {
            return Err(ProtoError::Malformed(format!(
                "{what} must travel as f32 (exact), not {}; encode it with Dtype::F32",
                dtype.name()
            )));
        }
        self.tensor_body(dtype)
    }

    /// A tensor's shape and data after its dtype: caps are checked before allocating.
    fn tensor_body(&mut self, dtype: Dtype) -> Result<Tensor> {
        let rows = self.u32("tensor rows")? as usize;
        let cols = self.u32("tensor cols")? as usize;
        if rows == 0 || cols == 0 {
            return Err(ProtoError::Malformed("empty tensor".into()));
        }
        if rows > MAX_TOKENS {
            return Err(ProtoError::TooLarge { what: "tensor rows".into(), size: rows, cap: MAX_TOKENS });
        }
        if cols > MAX_WIDTH {
            return Err(ProtoError::TooLarge { what: "tensor width".into(), size: cols, cap: MAX_WIDTH });
        }
        let n = match dtype {
            Dtype::F32 => rows * cols * 4,
            Dtype::Q8 => rows * q8_row_bytes(cols),
        };
        let data = self.take(n, "tensor data")?.to_vec();
        let t = Tensor { rows, cols, dtype, data };
        // Reject non-finite values here, so no hop ever computes on them.
        t.check()?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn q8_round_trip_is_within_half_a_step() {
        let v: Vec<f32> = (0..200).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.173).collect();
        let t = Tensor::encode(&v, 100, Dtype::Q8).unwrap();
        assert_eq!(t.data.len(), 2 * (4 * 2 + 100));
        let back = t.decode().unwrap();
        for (row, brow) in v.chunks(100).zip(back.chunks(100)) {
            for (blk, bblk) in row.chunks(32).zip(brow.chunks(32)) {
                let step = blk.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
                for (a, b) in blk.iter().zip(bblk) {
                    assert!((a - b).abs() <= step * 0.51 + 1e-6, "{a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn q8_codes_are_the_shared_quantizers() {
        // The wire's codes and scales are odin_format::int8's, block by block, the short last
        // block of each row included (here 40 = 32 + 8).
        let v: Vec<f32> = (0..80).map(|i| (i as f32 * 0.37).sin() * 3.0 + 0.5).collect();
        let t = Tensor::encode(&v, 40, Dtype::Q8).unwrap();
        let mut want = Vec::new();
        for row in v.chunks(40) {
            for block in row.chunks(WIRE_BLOCK) {
                let mut q = vec![0i8; block.len()];
                let s = int8::quantize_block(block, &mut q);
                want.extend_from_slice(&s.to_bits().to_le_bytes());
                want.extend(q.iter().map(|&c| c as u8));
            }
        }
        assert_eq!(t.data, want);
    }

    #[test]
    fn values_too_large_for_an_f16_scale_are_refused_with_advice() {
        let e = Tensor::encode(&[1e7, 1.0], 2, Dtype::Q8).unwrap_err();
        assert!(e.to_string().contains("use the f32 wire"), "{e}");
        assert!(Tensor::encode(&[1e7, 1.0], 2, Dtype::F32).is_ok());
        assert!(Tensor::encode(&[1.0, f32::NAN], 2, Dtype::F32).is_err());
        assert!(Tensor::encode(&[1.0, 2.0, 3.0], 2, Dtype::F32).is_err());
    }

    #[test]
    fn tensors_are_capped_and_checked_before_use() {
        let read = |dtype: u8, rows: u32, cols: u32, data: &[u8]| {
            let mut w = Writer::new();
            w.u8(dtype);
            w.u32(rows);
            w.u32(cols);
            w.raw(data);
            let b = w.into_bytes();
            Reader::new(&b).tensor()
        };
        // Claims far past the caps are refused before any data is taken.
        assert!(matches!(read(0, u32::MAX, 1, &[]), Err(ProtoError::TooLarge { cap: MAX_TOKENS, .. })));
        assert!(matches!(read(1, 1, u32::MAX, &[]), Err(ProtoError::TooLarge { cap: MAX_WIDTH, .. })));
        assert!(read(0, 0, 4, &[]).unwrap_err().to_string().contains("empty tensor"));
        assert!(read(2, 1, 1, &[0; 4]).unwrap_err().to_string().contains("unknown tensor dtype 2"));
        assert!(read(0, 1, 2, &[0; 7]).unwrap_err().to_string().contains("ends inside tensor data"));
        // An int8 block whose f16 scale is NaN.
        let e = read(1, 1, 1, &[0x00, 0x7e, 5]).unwrap_err();
        assert!(e.to_string().contains("NaN or infinite scale"), "{e}");
        let t = read(1, 1, 1, &[0x00, 0x3c, 5]).unwrap();
        assert_eq!(t.decode().unwrap(), vec![5.0]);
    }

    proptest! {
        #[test]
        fn f32_tensors_are_lossless(v in proptest::collection::vec(-1e30f32..1e30, 1..300)) {
            let t = Tensor::encode(&v, v.len(), Dtype::F32).unwrap();
            prop_assert_eq!(t.decode().unwrap(), v);
        }
    }
}
