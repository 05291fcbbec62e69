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

use crate::error::{EngineError, Result};
use crate::quant::{quantize_rows, QMatrix, QRows, BLOCK};

/// File name of the int8 engine file inside a model directory.
pub const ENGINE_FILE: &str = "model.int8.safetensors";
/// Format tag written into the engine file's metadata.
/// Version 2 stores the LoRA matrices as int8 too; a version-1 file is stale and ignored.
pub const ENGINE_FORMAT: &str = "odin-int8/2";

/// Whether the engine stores tensor `name` as int8 blocks (the big matrices and the embedding).
pub fn is_quantized(name: &str) -> bool {
    const SUFFIXES: [&str; 15] = [
        // RWKV-6
        "att.receptance.weight",
        "att.key.weight",
        "att.value.weight",
        "att.gate.weight",
        "att.output.weight",
        "ffn.key.weight",
        "ffn.receptance.weight",
        "ffn.value.weight",
        // Llama
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.o_proj.weight",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
    ];
    const WHOLE: [&str; 4] = ["emb.weight", "head.weight", "model.embed_tokens.weight", "lm_head.weight"];
    WHOLE.contains(&name) || SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// Columns a quantized matrix of `cols` columns is stored with: the next multiple of 32.
///
/// A row that does not fill its last block is padded with zeros, which change neither
/// the block's scale nor any dot product; the activation is padded the same way.
pub fn padded_cols(cols: usize) -> usize {
    cols.next_multiple_of(BLOCK)
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

/// A safetensors file read tensor by tensor: only its header stays in memory,
/// so loading a shard costs the shard's own weights plus one tensor in flight.
pub struct TensorFile {
    path: std::path::PathBuf,
    file: std::sync::Mutex<std::fs::File>,
    data_start: u64,
    tensors: HashMap<String, TensorInfo>,
    metadata: HashMap<String, String>,
}

/// A tensor's entry in a safetensors header.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Element type, as safetensors spells it ("F32", "F16", "BF16", "I8", ...).
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Byte range within the data section.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// A tensor read from a file.
struct Loaded {
    dtype: String,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn dtype_size(d: &str) -> Option<usize> {
    Some(match d {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" => 1,
        _ => return None,
    })
}

/// The most header bytes we accept (safetensors' own limit).
const MAX_HEADER: u64 = 100_000_000;

impl TensorFile {
    /// Open `path` and check its header: every tensor's bytes must lie inside the file
    /// and match its dtype and shape.
    pub fn open(path: &Path) -> Result<Self> {
        use std::io::Read;
        let io = |err| EngineError::Io { path: path.to_path_buf(), err };
        let bad =
            |m: String| EngineError::BadWeights(format!("{} is not a valid safetensors file: {m}", path.display()));
        let mut file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut n8 = [0u8; 8];
        file.read_exact(&mut n8).map_err(|e| bad(format!("no header ({e})")))?;
        let n = u64::from_le_bytes(n8);
        if n > MAX_HEADER || 8 + n > len {
            return Err(bad(format!("header of {n} bytes does not fit a {len}-byte file")));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header).map_err(|e| bad(e.to_string()))?;
        let (tensors, metadata) = parse_header(&header, len - 8 - n).map_err(bad)?;
        Ok(Self { path: path.to_path_buf(), file: std::sync::Mutex::new(file), data_start: 8 + n, tensors, metadata })
    }

    /// The header's `__metadata__`.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// A tensor's header entry.
    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    fn read(&self, name: &str) -> Result<Loaded> {
        use std::io::{Read, Seek, SeekFrom};
        let info = self.tensors.get(name).ok_or_else(|| {
            EngineError::BadWeights(format!(
                "tensor `{name}` is missing from {}; the file does not match config.json",
                self.path.display()
            ))
        })?;
        let io = |err| EngineError::Io { path: self.path.clone(), err };
        let mut data = vec![0u8; (info.end - info.start) as usize];
        let mut f = self.file.lock().map_err(|_| EngineError::BadWeights("tensor file lock poisoned".into()))?;
        f.seek(SeekFrom::Start(self.data_start + info.start)).map_err(io)?;
        f.read_exact(&mut data).map_err(io)?;
        Ok(Loaded { dtype: info.dtype.clone(), shape: info.shape.clone(), data })
    }
}

/// A parsed safetensors header: tensor entries by name, and `__metadata__`.
pub type Header = (HashMap<String, TensorInfo>, HashMap<String, String>);

/// Tensor entries and metadata of a safetensors JSON header whose data section is
/// `data_len` bytes. Every entry is checked: known dtype, offsets inside the data,
/// and a byte length equal to its shape times its element size.
pub fn parse_header(header: &[u8], data_len: u64) -> std::result::Result<Header, String> {
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| format!("header is not a JSON object ({e})"))?;
    let mut tensors = HashMap::new();
    let mut metadata = HashMap::new();
    for (name, v) in json {
        if name == "__metadata__" {
            for (k, val) in v.as_object().into_iter().flatten() {
                if let Some(s) = val.as_str() {
                    metadata.insert(k.clone(), s.to_string());
                }
            }
            continue;
        }
        let dtype = v["dtype"].as_str().ok_or_else(|| format!("tensor `{name}` has no dtype"))?.to_string();
        let shape = v["shape"]
            .as_array()
            .ok_or_else(|| format!("tensor `{name}` has no shape"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| format!("tensor `{name}` has a bad shape"))?;
        let offs = v["data_offsets"].as_array().filter(|o| o.len() == 2);
        let (start, end) = match offs.map(|o| (o[0].as_u64(), o[1].as_u64())) {
            Some((Some(a), Some(b))) if a <= b && b <= data_len => (a, b),
            _ => return Err(format!("tensor `{name}` has data offsets outside the file")),
        };
        let size = dtype_size(&dtype).ok_or_else(|| format!("tensor `{name}` has unknown dtype {dtype}"))?;
        let want = shape.iter().try_fold(size, |acc, &d| acc.checked_mul(d));
        if want.map(|w| w as u64) != Some(end - start) {
            return Err(format!("tensor `{name}` ({dtype} {shape:?}) does not match its {} bytes", end - start));
        }
        tensors.insert(name, TensorInfo { dtype, shape, start, end });
    }
    Ok((tensors, metadata))
}

/// Where a shard's tensors come from.
pub enum Source<'a> {
    /// f32 tensors by name (a synthetic model, or tests).
    Memory(&'a HashMap<String, Vec<f32>>),
    /// `model.safetensors` (f32, f16 or bf16): matrices are quantized on load.
    Float(TensorFile),
    /// An engine file: matrices are taken as stored.
    Int8(TensorFile),
}

impl Source<'_> {
    fn load(&self, name: &str) -> Result<Loaded> {
        match self {
            Source::Float(f) | Source::Int8(f) => f.read(name),
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
                let t = self.load(&spec.name)?;
                check_shape(&spec.name, &t.shape, &spec.shape)?;
                to_f32(&spec.name, &t.dtype, &t.data)?
            }
        };
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(EngineError::BadWeights(format!("tensor `{}` has a non-finite value at {i}", spec.name)));
        }
        Ok(v)
    }

    /// Codes [rows, stored] and f16-exact scales [rows, stored/32] of a quantized tensor,
    /// `stored` being its columns padded to a multiple of 32 ([`padded_cols`]).
    fn codes(&self, spec: &TensorSpec) -> Result<(Vec<i8>, Vec<f32>, usize, usize)> {
        let (rows, cols) = match spec.shape.as_slice() {
            [r, c] => (*r, *c),
            s => return Err(EngineError::BadWeights(format!("tensor `{}` has shape {s:?}, not a matrix", spec.name))),
        };
        let stored = padded_cols(cols);
        match self {
            Source::Int8(_) => {
                let q = self.load(&spec.name)?;
                check_shape(&spec.name, &q.shape, &[rows, stored])?;
                if q.dtype != "I8" {
                    return Err(EngineError::BadWeights(format!("tensor `{}` is {}, expected I8", spec.name, q.dtype)));
                }
                let sname = format!("{}.scale", spec.name);
                let s = self.load(&sname)?;
                check_shape(&sname, &s.shape, &[rows, stored / BLOCK])?;
                if s.dtype != "F16" {
                    return Err(EngineError::BadWeights(format!("tensor `{sname}` is {}, expected F16", s.dtype)));
                }
                let codes: Vec<i8> = q.data.iter().map(|&b| b as i8).collect();
                if codes.contains(&-128) {
                    return Err(EngineError::BadWeights(format!("tensor `{}` holds the code -128", spec.name)));
                }
                let scales: Vec<f32> =
                    s.data.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
                if scales.iter().any(|d| !d.is_finite()) {
                    return Err(EngineError::BadWeights(format!("tensor `{sname}` has a non-finite scale")));
                }
                Ok((codes, scales, rows, stored))
            }
            _ => Ok(quantize_padded(&self.f32s(spec)?, rows, cols)),
        }
    }

    /// An RWKV LoRA tensor (`[in, out]`, or `[k, in, out]` for k stacked matrices) as k
    /// matrices for the kernels, each transposed to `[out, in]` rows.
    ///
    /// The engine file stores them so: I8 `[k·out, in]` (`in` padded to whole blocks) plus
    /// its F16 scales, under the tensor's own name.
    pub fn lora(&self, spec: &TensorSpec) -> Result<Vec<QMatrix>> {
        let (k, n_in, n_out) = match spec.shape.as_slice() {
            [i, o] => (1, *i, *o),
            [k, i, o] => (*k, *i, *o),
            s => return Err(EngineError::BadWeights(format!("LoRA tensor `{}` has shape {s:?}", spec.name))),
        };
        let (codes, scales, _, cols) = match self {
            Source::Int8(_) => self.codes(&TensorSpec { shape: vec![k * n_out, n_in], ..spec.clone() })?,
            _ => {
                let data = self.f32s(spec)?;
                quantize_padded(&transpose(&data, n_in, n_out), k * n_out, n_in)
            }
        };
        let nb = cols / BLOCK;
        Ok((0..k)
            .map(|j| {
                let (c, s) = (j * n_out * cols, j * n_out * nb);
                QMatrix::from_rows(&codes[c..c + n_out * cols], &scales[s..s + n_out * nb], n_out, cols)
            })
            .collect())
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

/// Quantize row-major `data` [rows, cols], each row zero-padded to [`padded_cols`]:
/// returns (codes, scales, rows, padded columns).
fn quantize_padded(data: &[f32], rows: usize, cols: usize) -> (Vec<i8>, Vec<f32>, usize, usize) {
    let stored = padded_cols(cols);
    let (codes, scales) = if stored == cols {
        quantize_rows(data, rows, cols)
    } else {
        let padded: Vec<f32> = data
            .chunks_exact(cols)
            .flat_map(|r| r.iter().copied().chain(std::iter::repeat_n(0.0, stored - cols)))
            .collect();
        quantize_rows(&padded, rows, stored)
    };
    (codes, scales, rows, stored)
}

/// Every `[rows, cols]` row-major matrix in `x`, one after another, transposed to `[cols, rows]`.
pub fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    let n = rows * cols;
    if n == 0 {
        return out;
    }
    for (m, o) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        for r in 0..rows {
            for c in 0..cols {
                o[c * rows + r] = m[r * cols + c];
            }
        }
    }
    out
}

/// Whether `name` is one of RWKV-6's LoRA tensors, which the engine stores as int8 too ([`Source::lora`]).
pub fn is_lora(name: &str) -> bool {
    ["att.time_maa_w1", "att.time_maa_w2", "att.time_decay_w1", "att.time_decay_w2"].iter().any(|s| name.ends_with(s))
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

fn to_f32(name: &str, dtype: &str, d: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        "F32" => d.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        "F16" => d.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        "BF16" => d.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => {
            return Err(EngineError::BadWeights(format!(
                "tensor `{name}` has dtype {other}; expected F32, F16 or BF16"
            )))
        }
    })
}

/// The model id an engine file was made from, if its metadata names one in our format.
pub fn engine_file_source(file: &TensorFile) -> Option<String> {
    let m = file.metadata();
    (m.get("format").map(String::as_str) == Some(ENGINE_FORMAT)).then(|| m.get("model_id").cloned()).flatten()
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

    /// A kernel matrix in the file layout: its codes plus f16 scales.
    pub fn matrix(name: &str, m: &QMatrix) -> [Self; 2] {
        let (codes, scales) = m.to_rows();
        Self::q8(name, m.rows(), m.cols(), &codes, &scales)
    }

    /// Row-wise int8 storage (an embedding) in the file layout.
    pub fn rows(name: &str, e: &QRows) -> [Self; 2] {
        Self::q8(name, e.rows, e.cols, &e.codes, &e.scales)
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

/// Write `tensors` to `path` atomically as safetensors with `meta` as its `__metadata__`.
pub fn write_safetensors(path: &Path, tensors: &[OutTensor], meta: HashMap<String, String>) -> Result<()> {
    let views = tensors
        .iter()
        .map(|t| {
            TensorView::new(t.dtype, t.shape.clone(), &t.data)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| EngineError::BadWeights(format!("cannot write `{}`: {e}", t.name)))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| EngineError::BadWeights(format!("cannot serialise {}: {e}", path.display())))?;
    let tmp = path.with_extension("tmp");
    let io = |err| EngineError::Io { path: path.to_path_buf(), err };
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Write the engine file for model `id` to `path`.
pub fn write_engine_file(path: &Path, id: &ModelId, tensors: &[OutTensor]) -> Result<()> {
    let meta = [("format".to_string(), ENGINE_FORMAT.to_string()), ("model_id".to_string(), id.to_string())];
    write_safetensors(path, tensors, meta.into())
}
