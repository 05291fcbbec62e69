//! The engine's contract: the golden hash in every kernel and thread count,
//! prefill = step by step, shards in sequence = the whole model, the engine
//! file round trip, agreement with the f32 model, and clear errors.

use std::path::{Path, PathBuf};

use odin_engine::synthetic::{golden_config, golden_hash, weights, GOLDEN_HASH as GOLDEN, GOLDEN_SEED};
use odin_engine::weights::Source;
use odin_engine::{generate, EngineError, Input, Kernel, Logits, Options, Sampler, Sampling, Shard};
use odin_format::{ModelConfig, ModelId};

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/odin-tiny")
}

fn golden_shard(range: std::ops::Range<usize>, opts: Options) -> Shard {
    let cfg = golden_config();
    let w = weights(&cfg, GOLDEN_SEED);
    Shard::build(&ModelConfig::Rwkv6(cfg), ModelId([0; 32]), range, &Source::Memory(&w), opts).unwrap()
}

#[test]
fn golden_hash_is_the_same_for_every_kernel_and_thread_count() {
    let kernels = Kernel::supported();
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        assert!(kernels.contains(&Kernel::Avx2), "AVX2 is present but not offered");
    }
    for k in kernels {
        for threads in [1, 2, 3] {
            let h = golden_hash(Options { threads, kernel: Some(k), parallel_min_macs: 0 }).unwrap();
            assert_eq!(h, GOLDEN, "kernel {} with {threads} threads", k.name());
        }
    }
}

#[test]
fn prefill_equals_one_token_at_a_time() {
    let s = golden_shard(0..2, Options::default());
    let prompt = [1u32, 9, 33, 70, 2, 2, 95, 40];
    let mut a = s.new_state();
    let all = s.forward(Input::Tokens(&prompt), &mut a, Logits::All).unwrap();
    let mut b = s.new_state();
    let mut steps = Vec::new();
    for t in prompt {
        steps.extend(s.forward(Input::Tokens(&[t]), &mut b, Logits::Last).unwrap());
    }
    assert_eq!(bits(&all), bits(&steps));
    assert_eq!(a, b);
}

#[test]
fn shards_in_sequence_equal_the_whole_model() {
    let whole = golden_shard(0..2, Options::default());
    let first = golden_shard(0..1, Options::default());
    let last = golden_shard(1..2, Options { threads: 2, kernel: Some(Kernel::Scalar), parallel_min_macs: 0 });
    assert!(first.has_embedding() && !first.has_head() && last.has_head() && !last.has_embedding());
    let prompt = [4u32, 8, 15, 16, 23, 42];
    let mut sw = whole.new_state();
    let want = whole.forward(Input::Tokens(&prompt), &mut sw, Logits::All).unwrap();
    let (mut s1, mut s2) = (first.new_state(), last.new_state());
    let h = first.forward(Input::Tokens(&prompt), &mut s1, Logits::All).unwrap();
    assert_eq!(h.len(), prompt.len() * 64);
    let got = last.forward(Input::Hidden(&h), &mut s2, Logits::All).unwrap();
    assert_eq!(bits(&want), bits(&got));
    assert_eq!(sw.layers[0], s1.layers[0]);
    assert_eq!(sw.layers[1], s2.layers[0]);

    // A route may use part of a server's range: the whole shard run as 0..1 then 1..2.
    let (mut p1, mut p2) = (whole.new_state_for(0..1).unwrap(), whole.new_state_for(1..2).unwrap());
    let h2 = whole.forward(Input::Tokens(&prompt), &mut p1, Logits::All).unwrap();
    assert_eq!(bits(&h), bits(&h2));
    let got2 = whole.forward(Input::Hidden(&h2), &mut p2, Logits::All).unwrap();
    assert_eq!(bits(&want), bits(&got2));
    assert!(whole.new_state_for(1..3).is_err() && whole.new_state_for(1..1).is_err());
    assert!(last.new_state_for(0..2).is_err());
}

#[test]
fn bad_input_gets_clear_errors() {
    let first = golden_shard(0..1, Options::default());
    let last = golden_shard(1..2, Options::default());
    let mut st = first.new_state();
    let e = first.forward(Input::Tokens(&[96]), &mut st, Logits::Last).unwrap_err();
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    let e = first.forward(Input::Hidden(&[0.0; 64]), &mut st, Logits::Last).unwrap_err();
    assert!(e.to_string().contains("token ids"), "{e}");
    let mut st2 = last.new_state();
    let e = last.forward(Input::Hidden(&[0.0; 63]), &mut st2, Logits::Last).unwrap_err();
    assert!(e.to_string().contains("64-wide"), "{e}");
    let mut nan = vec![0.0; 64];
    nan[5] = f32::NAN;
    let e = last.forward(Input::Hidden(&nan), &mut st2, Logits::Last).unwrap_err();
    assert!(e.to_string().contains("NaN"), "{e}");
    let e = last.forward(Input::Hidden(&[0.0; 64]), &mut st, Logits::Last).unwrap_err();
    assert!(matches!(e, EngineError::StateMismatch(_)), "{e}");
    let cfg = golden_config();
    let w = weights(&cfg, 1);
    let e = Shard::build(&ModelConfig::Rwkv6(cfg), ModelId([0; 32]), 1..3, &Source::Memory(&w), Options::default());
    assert!(e.err().unwrap().to_string().contains("does not fit"));
}

#[test]
fn sampling_is_deterministic_per_seed() {
    let s = golden_shard(0..2, Options::default());
    let run = |seed| {
        let mut sm = Sampler::new(Sampling { temperature: 1.0, top_k: 20, top_p: 0.95, seed });
        generate(&s, &[3, 1, 4, 1, 5], 24, &mut sm, None, |_| true).unwrap().0
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn engine_file_round_trips_without_requantizing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(bundled().join(f), dir.join(f)).unwrap();
    }
    let fresh = Shard::load(dir, None, Options::default()).unwrap();
    assert!(!Shard::has_engine_file(dir).unwrap());
    let path = fresh.save_engine_file(dir).unwrap();
    assert!(Shard::has_engine_file(dir).unwrap());
    let size = std::fs::metadata(&path).unwrap().len();
    let f32_size = std::fs::metadata(dir.join("model.safetensors")).unwrap().len();
    assert!(size * 3 < f32_size, "engine file {size} B vs f32 {f32_size} B");
    let loaded = Shard::load(dir, None, Options::default()).unwrap();
    let prompt = [10u32, 20, 30, 40, 50];
    let run = |s: &Shard| {
        let mut st = s.new_state();
        s.forward(Input::Tokens(&prompt), &mut st, Logits::All).unwrap()
    };
    assert_eq!(bits(&run(&fresh)), bits(&run(&loaded)));
    // A truncated engine file for these weights is an error, not a crash.
    let good = std::fs::read(&path).unwrap();
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    let e = Shard::load(dir, None, Options::default()).err().unwrap();
    assert!(e.to_string().contains("not a valid safetensors"), "{e}");
    // Changed model files make a (valid) engine file stale: it is ignored, not trusted.
    std::fs::write(&path, &good).unwrap();
    let mut bytes = std::fs::read(dir.join("tokenizer.json")).unwrap();
    bytes.push(b'\n');
    std::fs::write(dir.join("tokenizer.json"), bytes).unwrap();
    assert!(!Shard::has_engine_file(dir).unwrap());
    assert!(Shard::load(dir, None, Options::default()).is_ok(), "stale file ignored");
}

/// The engine against the f32 candle model on the bundled model: the same next token almost always.
#[test]
fn int8_agrees_with_the_f32_model() {
    use candle_core::{Device, Tensor};
    let dir = bundled();
    let m = odin_model::ModelDir::load(&dir, &Device::Cpu).unwrap();
    let f32_shard = odin_model::Shard::full(&m.config, &m.weights).unwrap();
    let engine = Shard::load(&dir, None, Options::default()).unwrap();
    let v = m.config.vocab_size();
    let (mut agree, mut total) = (0, 0);
    for seed in 0..8u32 {
        let prompt: Vec<u32> = (0..48).map(|i| (i * 37 + seed * 101 + 7) % v as u32).collect();
        let x = Tensor::from_vec(prompt.clone(), (1, prompt.len()), &Device::Cpu).unwrap();
        let want = f32_shard.forward(&x, None).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut st = engine.new_state();
        let got = engine.forward(Input::Tokens(&prompt), &mut st, Logits::All).unwrap();
        for (a, b) in want.chunks(v).zip(got.chunks(v)) {
            total += 1;
            agree += usize::from(odin_engine::math::argmax(a) == odin_engine::math::argmax(b));
        }
    }
    assert!(agree * 100 >= total * 95, "top-1 agreement {agree}/{total}");
}

/// Teacher-forced next-token agreement with the f32 model on held-out test records
/// (1,100 committed records, 100 per task: the ones `odin eval --per-task 100 --seed 1` scores on
/// the seed-7 `--reversed --trace` test split): the bar is 99%. Measured 99.07% with the bundled
/// model (99.09% for the from-scratch model on its own data), so the engine sits right at the bar.
#[test]
fn int8_next_token_agrees_with_f32_on_held_out_records() {
    use candle_core::{Device, Tensor};
    let dir = bundled();
    let m = odin_model::ModelDir::load(&dir, &Device::Cpu).unwrap();
    let f32_shard = odin_model::Shard::full(&m.config, &m.weights).unwrap();
    let engine = Shard::load(&dir, None, Options::default()).unwrap();
    let tk = odin_text::load_tokenizer(&dir).unwrap();
    let v = m.config.vocab_size();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/odin-tiny-test-sample.jsonl");
    let (mut agree, mut total) = (0usize, 0usize);
    for line in std::fs::read_to_string(sample).unwrap().lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let mut ids = odin_text::prompt_ids(&tk, r["prompt"].as_str().unwrap()).unwrap();
        let answer_at = ids.len() - 1;
        ids.extend(tk.encode(r["completion"].as_str().unwrap(), false).unwrap().get_ids());
        let x = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu).unwrap();
        let want = f32_shard.forward(&x, None).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut st = engine.new_state();
        let got = engine.forward(Input::Tokens(&ids), &mut st, Logits::All).unwrap();
        for (a, b) in want.chunks(v).zip(got.chunks(v)).skip(answer_at) {
            total += 1;
            agree += usize::from(odin_engine::math::argmax(a) == odin_engine::math::argmax(b));
        }
    }
    let rate = agree as f64 / total as f64;
    println!("top-1 agreement on answer positions: {agree}/{total} = {:.2}%", 100.0 * rate);
    assert!(rate >= 0.99, "top-1 agreement {agree}/{total}");
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}
