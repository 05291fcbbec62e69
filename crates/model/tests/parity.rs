//! Parity with the peers' reference implementations: BlinkDL's `rwkv`
//! package for RWKV-6 and Hugging Face `transformers` for Llama. The
//! fixtures come from `fixtures/make_fixtures.py`.

mod common;

use candle_core::Tensor;
use common::{load, max_abs_diff, prompt};
use odin_model::{Shard, ShardState};

const TOL: f32 = 1e-4;

/// Logits of the prompt fed one token at a time through the recurrent form, [T, V].
fn step_logits(model: &Shard, prompt: &Tensor) -> Tensor {
    let mut state = model.new_state(1).unwrap();
    let ids = prompt.squeeze(0).unwrap();
    let rows: Vec<Tensor> = (0..ids.dim(0).unwrap())
        .map(|t| model.step(&ids.narrow(0, t, 1).unwrap(), &mut state).unwrap().squeeze(0).unwrap())
        .collect();
    Tensor::stack(&rows, 0).unwrap()
}

#[test]
fn rwkv6_parity_logits_match_reference_package() {
    let (m, exp) = load("rwkv6-tiny");
    let model = Shard::full(&m.config, &m.weights).unwrap();
    let logits = model.forward(&prompt(&exp), None).unwrap().squeeze(0).unwrap();
    let d = max_abs_diff(&logits, &exp["logits"]);
    assert!(d <= TOL, "max abs diff {d}");
}

#[test]
fn rwkv6_parity_state_after_prompt_matches_reference_package() {
    let (m, exp) = load("rwkv6-tiny");
    let model = Shard::full(&m.config, &m.weights).unwrap();
    let mut state = model.new_state(1).unwrap();
    model.forward(&prompt(&exp), Some(&mut state)).unwrap();
    let ShardState::Rwkv6(st) = state else { panic!("rwkv state") };
    for (i, l) in st.layers.iter().enumerate() {
        for (name, ours) in [("att_shift", &l.att_shift), ("wkv", &l.wkv), ("ffn_shift", &l.ffn_shift)] {
            let d = max_abs_diff(&ours.squeeze(0).unwrap(), &exp[&format!("state.{i}.{name}")]);
            assert!(d <= TOL, "layer {i} {name}: max abs diff {d}");
        }
    }
}

#[test]
fn rwkv6_parity_recurrent_steps_match_reference_package() {
    let (m, exp) = load("rwkv6-tiny");
    let model = Shard::full(&m.config, &m.weights).unwrap();
    let d = max_abs_diff(&step_logits(&model, &prompt(&exp)), &exp["step_logits"]);
    assert!(d <= TOL, "max abs diff {d}");
}

#[test]
fn llama_parity_logits_match_transformers() {
    let (m, exp) = load("llama-tiny");
    let model = Shard::full(&m.config, &m.weights).unwrap();
    let logits = model.forward(&prompt(&exp), None).unwrap().squeeze(0).unwrap();
    let d = max_abs_diff(&logits, &exp["logits"]);
    assert!(d <= TOL, "max abs diff {d}");
}

#[test]
fn llama_parity_kv_cache_steps_match_transformers() {
    let (m, exp) = load("llama-tiny");
    let model = Shard::full(&m.config, &m.weights).unwrap();
    let d = max_abs_diff(&step_logits(&model, &prompt(&exp)), &exp["logits"]);
    assert!(d <= TOL, "max abs diff {d}");
}
