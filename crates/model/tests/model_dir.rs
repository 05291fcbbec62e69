//! Model directories: exact save/load round trip, content ids, and clear
//! errors for corrupt or mismatched files.

mod common;

use std::path::Path;

use candle_core::{Device, Tensor};
use common::{fixture, load};
use odin_model::{init_weights, model_id, ModelConfig, ModelDir, ModelError, Shard};

fn copy_fixture(name: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(name).join(f), to.join(f)).unwrap();
    }
}

#[test]
fn save_and_load_round_trip_exactly() {
    let (m, _) = load("rwkv6-tiny");
    let tmp = tempfile::tempdir().unwrap();
    let tok = tmp.path().join("tok.json");
    std::fs::write(&tok, "{\"model\": {}}").unwrap();
    let out = tmp.path().join("copy");
    let id = ModelDir::save(&m.config, &m.weights, Some(&tok), &out).unwrap();
    let back = ModelDir::load(&out, &Device::Cpu).unwrap();
    assert_eq!(back.config, m.config);
    assert_eq!(back.id, id);
    assert!(back.tokenizer.is_some());
    assert_eq!(back.weights.len(), m.weights.len());
    for ((a, x), (b, y)) in m.weights.iter().zip(back.weights.iter()) {
        assert_eq!(a, b);
        let (x, y) =
            (x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), y.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{a} changed on round trip");
    }
    // Saving the same model again gives byte-identical files, hence the same id.
    let again = ModelDir::save(&back.config, &back.weights, Some(&tok), &tmp.path().join("again")).unwrap();
    assert_eq!(again, id);
}

#[test]
fn model_id_covers_every_canonical_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    copy_fixture("rwkv6-tiny", &dir);
    let base = model_id(&dir).unwrap();
    assert_eq!(base, model_id(&dir).unwrap(), "id is stable");
    assert_eq!(base.to_string().len(), 64);
    // Adding a tokenizer changes the id.
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    let with_tok = model_id(&dir).unwrap();
    assert_ne!(with_tok, base);
    // One flipped bit in the weights changes the id.
    let mut bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(dir.join("model.safetensors"), &bytes).unwrap();
    assert_ne!(model_id(&dir).unwrap(), with_tok);
    // Other files in the directory do not matter.
    std::fs::write(dir.join("notes.txt"), "hello").unwrap();
    let before = model_id(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "changed").unwrap();
    assert_eq!(model_id(&dir).unwrap(), before);
}

#[test]
fn corrupt_and_mismatched_files_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, _) = load("rwkv6-tiny");
    let dev = Device::Cpu;

    // Truncated weights file.
    let dir = tmp.path().join("trunc");
    copy_fixture("rwkv6-tiny", &dir);
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(ModelDir::load(&dir, &dev), Err(ModelError::BadSafetensors { .. })));

    // Garbage header length.
    std::fs::write(dir.join("model.safetensors"), u64::MAX.to_le_bytes()).unwrap();
    assert!(matches!(ModelDir::load(&dir, &dev), Err(ModelError::BadSafetensors { .. })));

    // Non-finite values.
    let mut w = m.weights.clone();
    w.insert("blocks.1.att.time_decay", Tensor::new(&[[[f32::NAN; 64]]], &dev).unwrap());
    let err = w.validate(&m.config).unwrap_err();
    assert!(matches!(err, ModelError::NonFinite(ref n) if n == "blocks.1.att.time_decay"), "{err}");

    // Wrong shape and missing tensor.
    let mut w = m.weights.clone();
    w.insert("head.weight", Tensor::zeros((3, 3), candle_core::DType::F32, &dev).unwrap());
    assert!(matches!(w.validate(&m.config), Err(ModelError::ShapeMismatch { .. })));
    let cfg_more_layers = match &m.config {
        ModelConfig::Rwkv6(c) => ModelConfig::Rwkv6(odin_model::Rwkv6Config { num_layers: 4, ..c.clone() }),
        _ => unreachable!(),
    };
    let err = m.weights.validate(&cfg_more_layers).unwrap_err().to_string();
    assert!(err.contains("blocks.3") && err.contains("missing"), "{err}");

    // Bad config.json.
    let dir = tmp.path().join("badcfg");
    copy_fixture("rwkv6-tiny", &dir);
    std::fs::write(dir.join("config.json"), "{\"architecture\": \"rwkv6\", \"vocab_size\": 3}").unwrap();
    let err = ModelDir::load(&dir, &dev).unwrap_err().to_string();
    assert!(err.contains("invalid model config") && err.contains("hidden_size"), "{err}");

    // Missing directory.
    let err = ModelDir::load(&tmp.path().join("nope"), &dev).unwrap_err().to_string();
    assert!(err.contains("cannot access"), "{err}");
}

#[test]
fn fresh_models_from_official_init_run_and_save() {
    let cfg =
        ModelConfig::from_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/rwkv6-tiny.json")).unwrap();
    let w = init_weights(&cfg, 1, &Device::Cpu).unwrap();
    w.validate(&cfg).unwrap();
    let shard = Shard::full(&cfg, &w).unwrap();
    let logits = shard.forward(&Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap(), None).unwrap();
    assert_eq!(logits.dims(), &[1, 3, cfg.vocab_size()]);
    let tmp = tempfile::tempdir().unwrap();
    let id = ModelDir::save(&cfg, &w, None, tmp.path()).unwrap();
    assert_eq!(ModelDir::load(tmp.path(), &Device::Cpu).unwrap().id, id);
}
