//! Reading a shard's tensors from `model.safetensors` (quantizing on load)
//! or from the engine file `model.int8.safetensors` (no requantizing), and
//! writing the engine file.
//!
//! The engine file is plain safetensors: each quantized matrix `N` is stored
//! as `N` (I8, [rows, cols]) plus `N.scale` (F16, [rows, cols/32]), exactly
//! the Q8_0 blocks; every other tensor keeps its f32 name and shape. Its
//! metadata names the source model id, so a stale file is never used.

use std::collections::HashMap;
use std::path::Path;

use half::f16;
use odin_format::{ModelConfig, ModelId, TensorPlace, TensorSpec};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::error::{EngineError, Result};
use crate::quant::{quantize_rows, QMatrix, QRows, BLOCK};

/// File name of the int8 engine file inside a model directory.
pub const ENGINE_FILE: &str = "model.int8.safetensors";
/// Format tag written into the engine file's metadata.
pub const ENGINE_FORMAT: &str = "odin-int8/1";

/// Whether the engine stores tensor `name` as int8 blocks (the big matrices and the embedding).
pub fn is_quantized(name: &str) -> bool {
    const SUFFIXES: [&str; 8] = [
        "att.receptance.weight",
        "att.key.weight",
        "att.value.weight",
        "att.gate.weight",
        "att.output.weight",
        "ffn.key.weight",
        "ffn.receptance.weight",
        "ffn.value.weight",
    ];
    name == "emb.weight" || name == "head.weight" || SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// The tensors a shard over `range` needs, by name.
pub fn shard_specs(cfg: &ModelConfig, range: &std::ops::Range<usize>) -> HashMap<String, TensorSpec> {
    let l = cfg.num_layers();
    cfg.tensor_specs()
        .into_iter()
        .filter(|s| match s.place {
            TensorPlace::Embedding => range.start == 0,
            TensorPlace::Head => range.end == l,
            TensorPlace::Block(i) => range.contains(&i),
        })
        .map(|s| (s.name.clone(), s))
        .collect()
}

/// Where a shard's tensors come from.
pub enum Source<'a> {
    /// f32 tensors by name (a synthetic model, or tests).
    Memory(&'a HashMap<String, Vec<f32>>),
    /// A parsed `model.safetensors` (f32, f16 or bf16): matrices are quantized on load.
    Float(SafeTensors<'a>),
    /// A parsed engine file: matrices are taken as stored.
    Int8(SafeTensors<'a>),
}

impl Source<'_> {
    fn view(&self, name: &str) -> Result<TensorView<'_>> {
        match self {
            Source::Float(st) | Source::Int8(st) => st.tensor(name).map_err(|_| {
                EngineError::BadWeights(format!("tensor `{name}` is missing; the file does not match config.json"))
            }),
            Source::Memory(_) => Err(EngineError::BadWeights(format!("tensor `{name}` is missing"))),
        }
    }

    /// An f32 tensor of `shape`.
    pub fn f32s(&self, spec: &TensorSpec) -> Result<Vec<f32>> {
        let v = match self {
            Source::Memory(m) => {
                let v = m
                    .get(&spec.name)
                    .ok_or_else(|| EngineError::BadWeights(format!("tensor `{}` is missing", spec.name)))?;
                if v.len() != spec.numel() {
                    return Err(EngineError::BadWeights(format!(
                        "tensor `{}` has {} values, the config implies {}",
                        spec.name,
                        v.len(),
                        spec.numel()
                    )));
                }
                v.clone()
            }
            _ => {
                let view = self.view(&spec.name)?;
                check_shape(&spec.name, view.shape(), &spec.shape)?;
                to_f32(&spec.name, &view)?
            }
        };
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(EngineError::BadWeights(format!("tensor `{}` has a non-finite value at {i}", spec.name)));
        }
        Ok(v)
    }

    /// Codes [rows, cols] and f16-exact scales [rows, cols/32] of a quantized tensor.
    fn codes(&self, spec: &TensorSpec) -> Result<(Vec<i8>, Vec<f32>, usize, usize)> {
        let (rows, cols) = match spec.shape.as_slice() {
            [r, c] => (*r, *c),
            s => return Err(EngineError::BadWeights(format!("tensor `{}` has shape {s:?}, not a matrix", spec.name))),
        };
        if cols % BLOCK != 0 {
            return Err(EngineError::BadWeights(format!(
                "tensor `{}` has {cols} columns; the int8 engine needs a multiple of {BLOCK}",
                spec.name
            )));
        }
        match self {
            Source::Int8(_) => {
                let q = self.view(&spec.name)?;
                check_shape(&spec.name, q.shape(), &spec.shape)?;
                if q.dtype() != Dtype::I8 {
                    return Err(EngineError::BadWeights(format!(
                        "tensor `{}` is {:?}, expected I8",
                        spec.name,
                        q.dtype()
                    )));
                }
                let sname = format!("{}.scale", spec.name);
                let s = self.view(&sname)?;
                check_shape(&sname, s.shape(), &[rows, cols / BLOCK])?;
                if s.dtype() != Dtype::F16 {
                    return Err(EngineError::BadWeights(format!("tensor `{sname}` is {:?}, expected F16", s.dtype())));
                }
                let codes: Vec<i8> = q.data().iter().map(|&b| b as i8).collect();
                if codes.contains(&-128) {
                    return Err(EngineError::BadWeights(format!("tensor `{}` holds the code -128", spec.name)));
                }
                let scales: Vec<f32> =
                    s.data().chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
                if scales.iter().any(|d| !d.is_finite()) {
                    return Err(EngineError::BadWeights(format!("tensor `{sname}` has a non-finite scale")));
                }
                Ok((codes, scales, rows, cols))
            }
            _ => {
                let data = self.f32s(spec)?;
                let (codes, scales) = quantize_rows(&data, rows, cols);
                Ok((codes, scales, rows, cols))
            }
        }
    }

    /// A matrix for the kernels.
    pub fn matrix(&self, spec: &TensorSpec) -> Result<QMatrix> {
        let (codes, scales, rows, cols) = self.codes(spec)?;
        Ok(QMatrix::from_rows(&codes, &scales, rows, cols))
    }

    /// Row-wise int8 storage (the embedding).
    pub fn rows(&self, spec: &TensorSpec) -> Result<QRows> {
        let (codes, scales, rows, cols) = self.codes(spec)?;
        Ok(QRows { rows, cols, codes, scales })
    }
}

fn check_shape(name: &str, found: &[usize], want: &[usize]) -> Result<()> {
    // The model layer stores [1,1,C] mixing vectors; any shape with the same element count is one tensor.
    if found != want && found.iter().product::<usize>() != want.iter().product::<usize>() {
        return Err(EngineError::BadWeights(format!(
            "tensor `{name}` has shape {found:?}, the config implies {want:?}"
        )));
    }
    Ok(())
}

fn to_f32(name: &str, v: &TensorView<'_>) -> Result<Vec<f32>> {
    let d = v.data();
    Ok(match v.dtype() {
        Dtype::F32 => d.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => d.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => d.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => {
            return Err(EngineError::BadWeights(format!(
                "tensor `{name}` has dtype {other:?}; expected F32, F16 or BF16"
            )))
        }
    })
}

/// A file's bytes: memory-mapped where the platform allows, so a shard reads only its own tensors.
pub struct FileBytes {
    #[cfg(not(target_arch = "wasm32"))]
    map: memmap2::Mmap,
    #[cfg(target_arch = "wasm32")]
    buf: Vec<u8>,
}

impl FileBytes {
    /// Open `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| EngineError::Io { path: path.to_path_buf(), source };
        #[cfg(not(target_arch = "wasm32"))]
        {
            let f = std::fs::File::open(path).map_err(io)?;
            // SAFETY: the file is only read; a concurrent writer could change the bytes under us,
            // which at worst yields wrong weights that the model id check or parser rejects.
            let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io)?;
            Ok(Self { map })
        }
        #[cfg(target_arch = "wasm32")]
        {
            Ok(Self { buf: std::fs::read(path).map_err(io)? })
        }
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        #[cfg(not(target_arch = "wasm32"))]
        {
            &self.map
        }
        #[cfg(target_arch = "wasm32")]
        {
            &self.buf
        }
    }
}

/// Parse safetensors bytes with the file named in errors.
pub fn parse<'a>(bytes: &'a [u8], path: &Path) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes)
        .map_err(|e| EngineError::BadWeights(format!("{} is not a valid safetensors file: {e}", path.display())))
}

/// The model id an engine file was made from, if its metadata names one in our format.
/// A file that is not valid safetensors is an error: it would otherwise be silently skipped.
pub fn engine_file_source(bytes: &[u8], path: &Path) -> Result<Option<String>> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| {
        EngineError::BadWeights(format!(
            "{} is not a valid safetensors file ({e}); delete it or run `odin quantize` again",
            path.display()
        ))
    })?;
    let Some(m) = meta.metadata().as_ref() else { return Ok(None) };
    Ok((m.get("format").map(String::as_str) == Some(ENGINE_FORMAT)).then(|| m.get("model_id").cloned()).flatten())
}

/// One tensor to write: name, dtype, shape and little-endian bytes.
pub struct OutTensor {
    /// Name in the file.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Raw bytes.
    pub data: Vec<u8>,
}

impl OutTensor {
    /// An f32 tensor.
    pub fn f32(name: &str, shape: &[usize], v: &[f32]) -> Self {
        Self {
            name: name.into(),
            dtype: Dtype::F32,
            shape: shape.to_vec(),
            data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    /// A quantized matrix as codes plus f16 scales.
    pub fn q8(name: &str, rows: usize, cols: usize, codes: &[i8], scales: &[f32]) -> [Self; 2] {
        [
            Self {
                name: name.into(),
                dtype: Dtype::I8,
                shape: vec![rows, cols],
                data: codes.iter().map(|&c| c as u8).collect(),
            },
            Self {
                name: format!("{name}.scale"),
                dtype: Dtype::F16,
                shape: vec![rows, cols / BLOCK],
                data: scales.iter().flat_map(|&d| f16::from_f32(d).to_le_bytes()).collect(),
            },
        ]
    }
}

/// Write `tensors` to `path` atomically, with the engine metadata for `id`.
pub fn write_engine_file(path: &Path, id: &ModelId, tensors: &[OutTensor]) -> Result<()> {
    let views = tensors
        .iter()
        .map(|t| {
            TensorView::new(t.dtype, t.shape.clone(), &t.data)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| EngineError::BadWeights(format!("cannot write `{}`: {e}", t.name)))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta: HashMap<String, String> =
        [("format".to_string(), ENGINE_FORMAT.to_string()), ("model_id".to_string(), id.to_string())].into();
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| EngineError::BadWeights(format!("cannot serialise the engine file: {e}")))?;
    let tmp = path.with_extension("tmp");
    let io = |source| EngineError::Io { path: path.to_path_buf(), source };
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
