//! Named parameter tensors, trainable variables, and model directories on disk.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use odin_format::{model_id, ModelId};

/// Parameter tensors by official name.
///
/// The tensors may be plain (inference) or the tensors of [`Var`]s
/// (training); a model built from the latter records gradients.
#[derive(Debug, Clone, Default)]
pub struct Weights {
    map: BTreeMap<String, Tensor>,
}

impl Weights {
    /// Wrap a map of tensors.
    pub fn new(map: BTreeMap<String, Tensor>) -> Self {
        Self { map }
    }

    /// The tensor called `name`, checked against the expected shape.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.map.get(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))?;
        if t.dims() != shape {
            return Err(ModelError::ShapeMismatch {
                name: name.into(),
                found: t.dims().to_vec(),
                expected: shape.to_vec(),
            });
        }
        Ok(t.clone())
    }

    /// Insert or replace a tensor.
    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) {
        self.map.insert(name.into(), t);
    }

    /// Iterate over (name, tensor) in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.map.iter()
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Check that the tensors are exactly those the config implies, with the
    /// right shapes and finite values.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        let specs = cfg.tensor_specs();
        for s in &specs {
            let t = self.get(&s.name, &s.shape)?;
            if t.dtype() != DType::F32 && t.dtype() != DType::F64 {
                return Err(ModelError::BadInput(format!(
                    "tensor `{}` has dtype {:?}; ODIN model files store f32",
                    s.name,
                    t.dtype()
                )));
            }
            let finite = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?.iter().all(|x| x.is_finite());
            if !finite {
                return Err(ModelError::NonFinite(s.name.clone()));
            }
        }
        if self.map.len() != specs.len() {
            let known: std::collections::BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            if let Some(extra) = self.map.keys().find(|k| !known.contains(k.as_str())) {
                return Err(ModelError::UnexpectedTensor(extra.clone()));
            }
        }
        Ok(())
    }

    /// Load a safetensors file onto `device`.
    pub fn load_safetensors(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|err| ModelError::Io { path: path.to_path_buf(), err })?;
        let map = candle_core::safetensors::load_buffer(&bytes, device)
            .map_err(|e| ModelError::BadSafetensors { path: path.to_path_buf(), reason: e.to_string() })?;
        Ok(Self { map: map.into_iter().collect() })
    }

    /// Write every tensor to a safetensors file (f32, contiguous).
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        let mut map = HashMap::with_capacity(self.map.len());
        for (k, t) in &self.map {
            // Detach so saving a trainable model writes plain tensors.
            map.insert(k.clone(), t.detach().to_dtype(DType::F32)?.contiguous()?);
        }
        candle_core::safetensors::save(&map, path)
            .map_err(|e| ModelError::BadSafetensors { path: path.to_path_buf(), reason: e.to_string() })
    }

    /// Detached copy whose tensors record no gradient.
    pub fn detached(&self) -> Self {
        Self { map: self.map.iter().map(|(k, t)| (k.clone(), t.detach())).collect() }
    }

    /// A copy of every tensor on `device`.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        let mut map = BTreeMap::new();
        for (k, t) in &self.map {
            map.insert(k.clone(), t.to_device(device)?);
        }
        Ok(Self { map })
    }
}

/// Trainable parameters: one [`Var`] per tensor name.
#[derive(Debug, Clone, Default)]
pub struct VarStore {
    vars: BTreeMap<String, Var>,
}

impl VarStore {
    /// Make every tensor of `weights` a trainable variable (copies the data).
    pub fn from_weights(weights: &Weights) -> Result<Self> {
        let mut vars = BTreeMap::new();
        for (k, t) in weights.iter() {
            vars.insert(k.clone(), Var::from_tensor(&t.detach().copy()?)?);
        }
        Ok(Self { vars })
    }

    /// Weights whose tensors are these variables, so models built from them
    /// record gradients for every parameter.
    pub fn weights(&self) -> Weights {
        Weights { map: self.vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect() }
    }

    /// Iterate over (name, var) in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Var)> {
        self.vars.iter()
    }

    /// The variable called `name`.
    pub fn get(&self, name: &str) -> Option<&Var> {
        self.vars.get(name)
    }
}

/// A model directory: `config.json`, `model.safetensors` and an optional
/// `tokenizer.json`, in the Hugging Face layout.
#[derive(Debug, Clone)]
pub struct ModelDir {
    /// Parsed `config.json`.
    pub config: ModelConfig,
    /// All parameter tensors.
    pub weights: Weights,
    /// Path of `tokenizer.json` when the directory has one.
    pub tokenizer: Option<PathBuf>,
    /// Content id of the files as loaded.
    pub id: ModelId,
}

impl ModelDir {
    /// Load and validate a model directory.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let weights = Weights::load_safetensors(&dir.join("model.safetensors"), device)?;
        weights.validate(&config)?;
        let tok = dir.join("tokenizer.json");
        let tokenizer = tok.is_file().then_some(tok);
        let id = model_id(dir)?;
        Ok(Self { config, weights, tokenizer, id })
    }

    /// Write `config.json` and `model.safetensors` into `dir` (created if
    /// needed) and copy `tokenizer.json` when one is attached. Returns the id.
    pub fn save(config: &ModelConfig, weights: &Weights, tokenizer: Option<&Path>, dir: &Path) -> Result<ModelId> {
        weights.validate(config)?;
        std::fs::create_dir_all(dir).map_err(|err| ModelError::Io { path: dir.to_path_buf(), err })?;
        let cfg_path = dir.join("config.json");
        std::fs::write(&cfg_path, config.to_json()).map_err(|err| ModelError::Io { path: cfg_path, err })?;
        weights.save_safetensors(&dir.join("model.safetensors"))?;
        if let Some(src) = tokenizer {
            let dst = dir.join("tokenizer.json");
            if src != dst {
                std::fs::copy(src, &dst).map_err(|err| ModelError::Io { path: dst, err })?;
            }
        }
        Ok(model_id(dir)?)
    }
}
