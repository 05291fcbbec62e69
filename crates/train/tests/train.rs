//! The trainer end to end on a tiny dataset and model: exact resume, the
//! answer-only loss mask, and evaluation over a real split.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use odin_text::special;
use odin_train::config::{BatchSection, Curriculum, DataSection, ModelSection, OptimSection, RunSection};
use odin_train::data::TokenData;
use odin_train::trainer::masked_cross_entropy;
use odin_train::{RunEnd, TrainConfig, Trainer};

/// A tiny dataset with a tokenizer and a tiny model config, built once.
fn fixture() -> &'static (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    static F: OnceLock<(tempfile::TempDir, PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let mut o = odin_data::BuildOptions::preset("tiny", 3).unwrap();
        o.train = 600;
        odin_data::build(&o, &data, &|_, _, _, _| {}).unwrap();
        let m = odin_data::read_manifest(&data).unwrap();
        let recs = odin_data::read_split(&data, &m, "train").unwrap();
        let tk = odin_data::tokenizer::train(&recs, 320).unwrap();
        let tok = data.join("tokenizer.json");
        odin_data::tokenizer::save(&tk, &tok).unwrap();
        let model = tmp.path().join("model.json");
        std::fs::write(
            &model,
            r#"{"architecture":"rwkv6","decay_lora":8,"ffn_size":96,"group_norm_eps":0.00064,"head_size":16,
               "hidden_size":32,"layer_norm_eps":1e-5,"mix_lora":4,"num_layers":2,"vocab_size":320}"#,
        )
        .unwrap();
        (tmp, data, tok, model)
    })
}

fn config(out: &Path, steps: u64) -> TrainConfig {
    let (_, data, tok, model) = fixture();
    TrainConfig {
        seed: 11,
        out: out.to_path_buf(),
        model: ModelSection { config: model.clone(), init: None },
        data: DataSection { dir: data.clone(), tokenizer: tok.clone(), weights: BTreeMap::new() },
        optim: OptimSection {
            lr: 3e-3,
            min_lr: 3e-4,
            warmup_steps: 2,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.01,
            // Small enough that clipping is active on every step.
            clip: 0.5,
        },
        batch: BatchSection { rows: 2, seq_len: 96, accumulation: 2 },
        run: RunSection { steps, checkpoint_every: 3, log_every: 1, eval_per_task: 0 },
        curriculum: Curriculum { enabled: true, ramp: 0.5 },
    }
}

fn weights_bytes(t: &Trainer) -> BTreeMap<String, Vec<u8>> {
    t.weights()
        .iter()
        .map(|(k, v)| {
            let f = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (k.clone(), f.iter().flat_map(|x| x.to_le_bytes()).collect())
        })
        .collect()
}

#[test]
fn training_n_then_resuming_n_equals_training_2n() {
    let tmp = tempfile::tempdir().unwrap();
    let never = AtomicBool::new(false);
    let mut whole = Trainer::new(config(&tmp.path().join("a"), 8)).unwrap();
    let mut losses = Vec::new();
    assert_eq!(whole.run(&never, |s| losses.push(s.loss)).unwrap(), RunEnd::Finished);
    assert_eq!(whole.step, 8);
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(losses[7] < losses[0], "the loss should fall over 8 steps: {losses:?}");

    // Stop after step 4 the way Ctrl-C does (the flag), then resume in a new Trainer.
    let cfg_b = config(&tmp.path().join("b"), 8);
    let mut first = Trainer::new(cfg_b.clone()).unwrap();
    let stop = AtomicBool::new(false);
    let end = first
        .run(&stop, |s| {
            if s.step == 4 {
                stop.store(true, Ordering::SeqCst);
            }
        })
        .unwrap();
    assert_eq!(end, RunEnd::Interrupted);
    assert_eq!(first.step, 4);
    drop(first);
    let mut resumed = Trainer::resume(cfg_b.clone()).unwrap();
    assert_eq!(resumed.step, 4);
    assert_eq!(resumed.run(&never, |_| {}).unwrap(), RunEnd::Finished);
    assert_eq!(weights_bytes(&whole), weights_bytes(&resumed), "resumed weights differ from the uninterrupted run");
    assert_eq!(whole.tokens_seen, resumed.tokens_seen);

    // The metrics log holds each step once, in order, despite the interruption.
    let steps: Vec<u64> = odin_train::trainer::read_metrics(&cfg_b.out).unwrap().iter().map(|s| s.step).collect();
    assert_eq!(steps, (1..=8).collect::<Vec<_>>());

    // A checkpoint refuses to resume under a different config.
    let mut other = cfg_b.clone();
    other.optim.lr = 1e-3;
    assert!(matches!(Trainer::resume(other), Err(odin_train::TrainError::Checkpoint(_))));
}

#[test]
fn the_loss_covers_exactly_the_answer_tokens() {
    let (_, data, tok, _) = fixture();
    let tk = odin_text::tokenizer_from_file(tok).unwrap();
    let m = odin_data::read_manifest(data).unwrap();
    let recs = odin_data::read_split(data, &m, "train").unwrap();
    let td = TokenData::new(&tk, &recs, 128).unwrap();
    let mut rng = odin_train::data::batch_rng(1, 0, 0);
    let b = td.batch(&mut rng, 4, 128, &BTreeMap::new(), u8::MAX).unwrap();
    // Walk each row: after <|answer|> until <|eos|> targets are masked in, elsewhere out.
    let mut checked = 0;
    for row in 0..4 {
        let mut in_answer = false;
        for k in 0..128 {
            let (x, y, mk) = (b.inputs[row * 128 + k], b.targets[row * 128 + k], b.mask[row * 128 + k]);
            if x == special::ANSWER {
                in_answer = true;
            }
            if x == special::PAD {
                assert_eq!(mk, 0.0, "padding is never in the loss");
                continue;
            }
            assert_eq!(mk == 1.0, in_answer, "row {row} position {k}: input {x}, target {y}");
            if y == special::EOS {
                in_answer = false;
            }
            checked += 1;
        }
    }
    assert!(checked > 100);
    assert!(b.loss_tokens() > 0 && b.loss_tokens() < b.real_tokens);

    // Changing logits where the mask is 0 leaves the loss unchanged; where it is 1 it does not.
    let d = Device::Cpu;
    let (_, y, mask) = b.tensors(&d).unwrap();
    let logits = Tensor::randn(0f32, 1.0, (4, 128, 320), &d).unwrap();
    let base = masked_cross_entropy(&logits, &y, &mask).unwrap().to_scalar::<f32>().unwrap();
    let inv = (1.0 - &mask).unwrap().unsqueeze(2).unwrap().broadcast_as((4, 128, 320)).unwrap();
    let noise = Tensor::randn(0f32, 5.0, (4, 128, 320), &d).unwrap();
    let off = (&logits + (&noise * &inv).unwrap()).unwrap();
    let same = masked_cross_entropy(&off, &y, &mask).unwrap().to_scalar::<f32>().unwrap();
    assert!((base - same).abs() < 1e-5, "{base} vs {same}");
    let on_mask = mask.unsqueeze(2).unwrap().broadcast_as((4, 128, 320)).unwrap();
    let on = (&logits + (&noise * &on_mask).unwrap()).unwrap();
    let moved = masked_cross_entropy(&on, &y, &mask).unwrap().to_scalar::<f32>().unwrap();
    assert!((base - moved).abs() > 1e-3);
}

#[test]
fn evaluation_scores_a_seeded_sample_of_every_task_reproducibly() {
    let (_, data, tok, model) = fixture();
    let tk = odin_text::tokenizer_from_file(tok).unwrap();
    let cfg = odin_model::ModelConfig::from_file(model).unwrap();
    let w = odin_model::init_weights(&cfg, 4, &Device::Cpu).unwrap();
    let shard = odin_model::Shard::full(&cfg, &w).unwrap();
    let m = odin_data::read_manifest(data).unwrap();
    let recs = odin_data::read_split(data, &m, "test").unwrap();
    let opts = odin_train::eval::EvalOptions { per_task: Some(2), tasks: vec![], batch: 8, seed: 5 };
    let sb = odin_data::sandbox::Sandbox::detect();
    let a = odin_train::eval::evaluate(&shard, &tk, "test", &recs, &opts, sb.as_ref()).unwrap();
    let b = odin_train::eval::evaluate(&shard, &tk, "test", &recs, &opts, sb.as_ref()).unwrap();
    let tasks: std::collections::BTreeSet<&str> = recs.iter().map(|r| r.task.as_str()).collect();
    assert_eq!(a.overall.n, 2 * tasks.len());
    assert_eq!(a.by_task.len(), tasks.len());
    let ids = |r: &odin_train::eval::EvalReport| {
        r.outcomes.iter().map(|o| (o.id.clone(), o.output.clone())).collect::<Vec<_>>()
    };
    assert_eq!(ids(&a), ids(&b));
    // An untrained model answers (almost) nothing right.
    assert!(a.overall.accuracy < 0.5);
}

#[test]
fn the_shipped_training_configs_parse_and_compare_like_for_like() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let main = TrainConfig::load(&root.join("train-odin-tiny.toml")).unwrap();
    assert!(main.model.config.ends_with("odin-tiny.json"));
    let model = odin_model::ModelConfig::from_file(&main.model.config).unwrap();
    assert!(model.param_counts().total <= 10_000_000, "the first model must stay under 10M parameters");
    let r = TrainConfig::load(&root.join("compare-rwkv6.toml")).unwrap();
    let l = TrainConfig::load(&root.join("compare-llama.toml")).unwrap();
    // Everything but the model and the run directory is the same.
    let strip = |c: &TrainConfig| {
        let mut v = serde_json::to_value(c).unwrap();
        v["model"] = serde_json::Value::Null;
        v["out"] = serde_json::Value::Null;
        v
    };
    assert_eq!(strip(&r), strip(&l));
    let pr = odin_model::ModelConfig::from_file(&r.model.config).unwrap().param_counts().total as f64;
    let pl = odin_model::ModelConfig::from_file(&l.model.config).unwrap().param_counts().total as f64;
    assert!((pr - pl).abs() / pr < 0.01, "parameter budgets differ: {pr} vs {pl}");
}
