//! Where a shard's weights come from: a model directory's engine file when it
//! is current, else `model.safetensors`; and which block a tensor belongs to.

use std::ops::Range;
use std::path::Path;

use odin_format::{model_id, ModelConfig, ModelId};

use crate::error::{EngineError, Result};
use crate::weights::{engine_file_source, Source, TensorFile, ENGINE_FILE};

/// Split a per-block tensor name `{prefix}{i}.{rest}` into the block's index within `range`
/// (0 for `range.start`) and `rest`; an error when the name is not of a block in `range`.
pub(crate) fn block_name<'n>(name: &'n str, prefix: &str, range: &Range<usize>) -> Result<(usize, &'n str)> {
    let bad = || EngineError::BadInput(format!("`{name}` is not a tensor of this shard"));
    let rest = name.strip_prefix(prefix).ok_or_else(bad)?;
    let (idx, rest) = rest.split_once('.').ok_or_else(bad)?;
    let i: usize = idx.parse().map_err(|_| bad())?;
    if !range.contains(&i) {
        return Err(bad());
    }
    Ok((i - range.start, rest))
}

/// A model directory's config, content id and weights: its engine file when that was made
/// from these exact files, else `model.safetensors` (quantized on load).
pub(crate) fn open_model(dir: &Path) -> Result<(ModelConfig, ModelId, Source<'static>)> {
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let id = model_id(dir)?;
    let src = match current_engine_file(dir, &id)? {
        Some(file) => Source::Int8(file),
        None => Source::Float(TensorFile::open(&dir.join("model.safetensors"))?),
    };
    Ok((cfg, id, src))
}

/// The engine file in `dir` when it was made from model `id`; a stale one is ignored.
pub(crate) fn current_engine_file(dir: &Path, id: &ModelId) -> Result<Option<TensorFile>> {
    let path = dir.join(ENGINE_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let file = TensorFile::open(&path)?;
    Ok((engine_file_source(&file).as_deref() == Some(id.to_string().as_str())).then_some(file))
}
