//! Shared helpers for the model crate's integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use odin_model::ModelDir;

/// Path of a committed fixture directory.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Load a fixture model directory and its expected outputs.
pub fn load(name: &str) -> (ModelDir, HashMap<String, Tensor>) {
    let dir = fixture(name);
    let model = ModelDir::load(&dir, &Device::Cpu).expect("fixture model loads");
    let expected =
        candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).expect("fixture outputs load");
    (model, expected)
}

/// The fixture prompt as u32 ids [1, T].
pub fn prompt(expected: &HashMap<String, Tensor>) -> Tensor {
    expected["prompt"].to_dtype(DType::U32).unwrap().unsqueeze(0).unwrap()
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}
