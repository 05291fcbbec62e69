//! The training form agrees with the recurrent form, shards in sequence
//! equal the whole model, the backward relay equals whole-model autodiff,
//! and every parameter receives a gradient.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use common::{load, max_abs_diff};
use odin_model::ops::cross_entropy;
use odin_model::{ModelDir, Shard, VarStore};
use rand::{Rng, SeedableRng};

const MODELS: [&str; 2] = ["rwkv6-tiny", "llama-tiny"];

fn random_ids(vocab: usize, b: usize, t: usize, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let ids: Vec<u32> = (0..b * t).map(|_| rng.random_range(0..vocab as u32)).collect();
    Tensor::from_vec(ids, (b, t), &Device::Cpu).unwrap()
}

fn model(name: &str) -> ModelDir {
    load(name).0
}

/// Next-token loss over a batch: predict ids[:, 1:] from logits[:, :-1].
fn lm_loss(logits: &Tensor, ids: &Tensor) -> odin_model::Result<Tensor> {
    let t = ids.dim(1)?;
    cross_entropy(&logits.narrow(1, 0, t - 1)?, &ids.narrow(1, 1, t - 1)?)
}

#[test]
fn training_form_and_recurrent_form_agree() {
    for name in MODELS {
        let m = model(name);
        let shard = Shard::full(&m.config, &m.weights).unwrap();
        let ids = random_ids(m.config.vocab_size(), 2, 9, 1);
        let parallel = shard.forward(&ids, None).unwrap();
        let mut state = shard.new_state(2).unwrap();
        let mut steps = Vec::new();
        for t in 0..9 {
            let col = ids.narrow(1, t, 1).unwrap().squeeze(1).unwrap();
            steps.push(shard.step(&col, &mut state).unwrap());
        }
        let recurrent = Tensor::stack(&steps, 1).unwrap();
        let d = max_abs_diff(&parallel, &recurrent);
        assert!(d < 1e-4, "{name}: parallel vs recurrent max abs diff {d}");
    }
}

#[test]
fn chunked_prefill_with_state_equals_one_pass() {
    for name in MODELS {
        let m = model(name);
        let shard = Shard::full(&m.config, &m.weights).unwrap();
        let ids = random_ids(m.config.vocab_size(), 2, 11, 2);
        let whole = shard.forward(&ids, None).unwrap();
        let mut state = shard.new_state(2).unwrap();
        let a = shard.forward(&ids.narrow(1, 0, 4).unwrap(), Some(&mut state)).unwrap();
        let b = shard.forward(&ids.narrow(1, 4, 7).unwrap(), Some(&mut state)).unwrap();
        let d = max_abs_diff(&whole, &Tensor::cat(&[a, b], 1).unwrap());
        assert!(d < 1e-4, "{name}: chunked prefill max abs diff {d}");
    }
}

fn splits(layers: usize) -> Vec<Vec<std::ops::Range<usize>>> {
    assert_eq!(layers, 3, "fixtures have three blocks");
    vec![vec![0..1, 1..3], vec![0..2, 2..3], vec![0..1, 1..2, 2..3]]
}

#[test]
fn shards_in_sequence_equal_the_whole_model() {
    for name in MODELS {
        let m = model(name);
        let whole = Shard::full(&m.config, &m.weights).unwrap();
        let ids = random_ids(m.config.vocab_size(), 2, 7, 3);
        let want = whole.forward(&ids, None).unwrap();
        for split in splits(m.config.num_layers()) {
            let shards: Vec<Shard> =
                split.iter().map(|r| Shard::new(&m.config, &m.weights, r.clone()).unwrap()).collect();
            assert!(shards[0].has_embedding() && !shards[0].has_head());
            assert!(shards.last().unwrap().has_head());
            // Parallel form through the chain.
            let mut x = ids.clone();
            for s in &shards {
                x = s.forward(&x, None).unwrap();
            }
            let d = max_abs_diff(&want, &x);
            assert!(d < 1e-5, "{name} {split:?}: parallel chain max abs diff {d}");
            // Recurrent form through the chain, each shard with its own state.
            let mut states: Vec<_> = shards.iter().map(|s| s.new_state(2).unwrap()).collect();
            let mut outs = Vec::new();
            for t in 0..7 {
                let mut x = ids.narrow(1, t, 1).unwrap().squeeze(1).unwrap();
                for (s, st) in shards.iter().zip(states.iter_mut()) {
                    x = s.step(&x, st).unwrap();
                }
                outs.push(x);
            }
            let d = max_abs_diff(&want, &Tensor::stack(&outs, 1).unwrap());
            assert!(d < 1e-4, "{name} {split:?}: recurrent chain max abs diff {d}");
        }
    }
}

fn grads_by_name(g: &odin_model::ShardGrads) -> HashMap<String, Tensor> {
    g.params.iter().cloned().collect()
}

#[test]
fn backward_relay_matches_whole_model_autodiff() {
    for name in MODELS {
        let m = model(name);
        let vars = VarStore::from_weights(&m.weights).unwrap();
        let w = vars.weights();
        let ids = random_ids(m.config.vocab_size(), 2, 8, 4);
        let whole = Shard::full(&m.config, &w).unwrap();
        let want = grads_by_name(&whole.backward_with(&ids, |l| lm_loss(l, &ids)).unwrap());
        for split in splits(m.config.num_layers()) {
            let shards: Vec<Shard> = split.iter().map(|r| Shard::new(&m.config, &w, r.clone()).unwrap()).collect();
            // Forward: keep each shard's input, as a pipeline node would.
            let mut inputs = vec![ids.clone()];
            for s in &shards[..shards.len() - 1] {
                let next = s.forward(inputs.last().unwrap(), None).unwrap().detach();
                inputs.push(next);
            }
            // Backward: last shard from the loss, then relay the input gradient upstream.
            let last = shards.len() - 1;
            let mut g = shards[last].backward_with(&inputs[last], |l| lm_loss(l, &ids)).unwrap();
            let mut got = grads_by_name(&g);
            for i in (0..last).rev() {
                let upstream = g.input.clone().expect("hidden input has a gradient");
                g = shards[i].backward(&inputs[i], &upstream).unwrap();
                got.extend(grads_by_name(&g));
            }
            assert!(g.input.is_none(), "first shard takes token ids");
            assert_eq!(got.len(), want.len(), "{name} {split:?}: every parameter is covered once");
            for (pname, wg) in &want {
                let scale = wg
                    .abs()
                    .unwrap()
                    .max_keepdim(0)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                let d = max_abs_diff(wg, &got[pname]);
                assert!(d <= 1e-5 * (1.0 + scale), "{name} {split:?} {pname}: diff {d} (scale {scale})");
            }
        }
    }
}

#[test]
fn every_parameter_gets_a_finite_nonzero_gradient() {
    for name in MODELS {
        let m = model(name);
        let vars = VarStore::from_weights(&m.weights).unwrap();
        let shard = Shard::full(&m.config, &vars.weights()).unwrap();
        let ids = random_ids(m.config.vocab_size(), 2, 12, 5);
        let grads = shard.backward_with(&ids, |l| lm_loss(l, &ids)).unwrap();
        assert_eq!(grads.params.len(), m.config.tensor_specs().len());
        for (pname, g) in &grads.params {
            let v = g.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(v.iter().all(|x| x.is_finite()), "{name} {pname}: non-finite gradient");
            let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!(norm > 0.0, "{name} {pname}: zero gradient");
        }
    }
}

#[test]
fn backward_on_frozen_weights_says_how_to_fix_it() {
    let m = model("rwkv6-tiny");
    let shard = Shard::new(&m.config, &m.weights, 1..3).unwrap();
    let h = Tensor::zeros((1, 3, m.config.hidden_size()), DType::F32, &Device::Cpu).unwrap();
    let g = Tensor::zeros((1, 3, m.config.vocab_size()), DType::F32, &Device::Cpu).unwrap();
    let err = shard.backward(&h, &g).unwrap_err().to_string();
    assert!(err.contains("trainable"), "{err}");
}

#[test]
fn shards_reject_bad_inputs_and_ranges() {
    let m = model("rwkv6-tiny");
    assert!(Shard::new(&m.config, &m.weights, 2..2).is_err());
    assert!(Shard::new(&m.config, &m.weights, 0..4)
        .unwrap_err()
        .to_string()
        .contains("invalid for a model with 3 blocks"));
    let first = Shard::new(&m.config, &m.weights, 0..1).unwrap();
    let mid = Shard::new(&m.config, &m.weights, 1..2).unwrap();
    let big = Tensor::new(&[[1000u32]], &Device::Cpu).unwrap();
    assert!(first.forward(&big, None).unwrap_err().to_string().contains("outside the vocabulary"));
    let wrong_width = Tensor::zeros((1, 2, 5), DType::F32, &Device::Cpu).unwrap();
    assert!(mid.forward(&wrong_width, None).is_err());
    let ids = Tensor::new(&[[1u32]], &Device::Cpu).unwrap();
    assert!(mid.forward(&ids, None).is_err(), "a middle shard takes hidden states, not ids");
    // A state made for another shard is refused.
    let mut other = first.new_state(1).unwrap();
    let h = Tensor::zeros((1, m.config.hidden_size()), DType::F32, &Device::Cpu).unwrap();
    assert!(mid.step(&h, &mut other).unwrap_err().to_string().contains("state"));
}
