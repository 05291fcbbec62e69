//! The Llama-style model on the int8 engine: the f32 model layer's logits,
//! prefill = step by step, layer shards in sequence = the whole model on any
//! kernel and thread count, the padded engine file round trip, the context
//! limit, and generation through [`Model`].

use std::path::Path;

use candle_core::{Device, Tensor};
use odin_engine::synthetic::{llama_golden_config, llama_weights, GOLDEN_SEED};
use odin_engine::weights::Source;
use odin_engine::{
    generate, Decoder, EngineError, Input, Kernel, KvState, LlamaShard, Logits, Model, Options, Sampler, Sampling,
};
use odin_format::{LlamaConfig, ModelConfig, ModelId};

fn golden(range: std::ops::Range<usize>, opts: Options) -> LlamaShard {
    let cfg = llama_golden_config();
    let w = llama_weights(&cfg, GOLDEN_SEED);
    LlamaShard::build(&ModelConfig::Llama(cfg), ModelId([0; 32]), range, &Source::Memory(&w), opts).unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// llama-tiny's shape (its MLP width 656 is not a multiple of 32), two layers, initialised
/// by the model layer and saved as a model directory.
fn model_dir(dir: &Path) -> ModelConfig {
    let cfg: LlamaConfig =
        match ModelConfig::from_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/llama-tiny.json"))
            .unwrap()
        {
            ModelConfig::Llama(c) => LlamaConfig { num_layers: 2, ..c },
            other => panic!("llama-tiny.json is {}", other.architecture()),
        };
    let cfg = ModelConfig::Llama(cfg);
    let w = odin_model::init_weights(&cfg, 3, &Device::Cpu).unwrap();
    odin_model::ModelDir::save(&cfg, &w, None, dir).unwrap();
    cfg
}

#[test]
fn int8_logits_follow_the_f32_model_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = model_dir(tmp.path());
    let m = odin_model::ModelDir::load(tmp.path(), &Device::Cpu).unwrap();
    let f32_shard = odin_model::Shard::full(&m.config, &m.weights).unwrap();
    let engine = LlamaShard::load(tmp.path(), None, Options::default()).unwrap();
    let v = cfg.vocab_size();
    let prompt: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % v as u32).collect();
    let x = Tensor::from_vec(prompt.clone(), (1, prompt.len()), &Device::Cpu).unwrap();
    let want = f32_shard.forward(&x, None).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut st = engine.new_state();
    let got = engine.forward(Input::Tokens(&prompt), &mut st, Logits::All).unwrap();
    assert_eq!(want.len(), got.len());
    // Per position: the int8 error is small against the spread of the logits.
    for (t, (a, b)) in want.chunks(v).zip(got.chunks(v)).enumerate() {
        let err = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt();
        let norm = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(err < 0.05 * norm, "position {t}: error {err} against a logit norm of {norm}");
    }
    // A wrong RoPE or mask would be far off at later positions: check the last one exactly as above
    // and that the step-by-step KV cache gives the same logits as the parallel form.
    let mut cache = f32_shard.new_state(1).unwrap();
    let mut last = Vec::new();
    for &tok in &prompt {
        let l = f32_shard.step(&Tensor::new(&[tok], &Device::Cpu).unwrap(), &mut cache).unwrap();
        last = l.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    }
    let err = last.iter().zip(&got[got.len() - v..]).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let scale = last.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(err < 0.1 * scale, "last position: max error {err}, max logit {scale}");
}

#[test]
fn prefill_equals_one_token_at_a_time() {
    let s = golden(0..2, Options::default());
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
    assert_eq!(a.pos, prompt.len());
}

#[test]
fn layer_shards_in_sequence_equal_the_whole_model_on_every_kernel_and_thread_count() {
    let whole = golden(0..2, Options::default());
    let prompt = [4u32, 8, 15, 16, 23, 42];
    let mut sw = whole.new_state();
    let want = whole.forward(Input::Tokens(&prompt), &mut sw, Logits::All).unwrap();
    let next = whole.forward(Input::Tokens(&[7]), &mut sw, Logits::Last).unwrap();
    for k in Kernel::supported() {
        for threads in [1, 3] {
            let opts = Options { threads, kernel: Some(k), parallel_min_macs: 0 };
            let (first, last) = (golden(0..1, opts), golden(1..2, opts));
            assert!(first.has_embedding() && !first.has_head() && last.has_head() && !last.has_embedding());
            let (mut s1, mut s2) = (first.new_state(), last.new_state());
            let h = first.forward(Input::Tokens(&prompt), &mut s1, Logits::All).unwrap();
            assert_eq!(h.len(), prompt.len() * llama_golden_config().hidden_size);
            let got = last.forward(Input::Hidden(&h), &mut s2, Logits::All).unwrap();
            assert_eq!(bits(&want), bits(&got), "kernel {} with {threads} threads", k.name());
            let h = first.forward(Input::Tokens(&[7]), &mut s1, Logits::Last).unwrap();
            let got = last.forward(Input::Hidden(&h), &mut s2, Logits::Last).unwrap();
            assert_eq!(bits(&next), bits(&got), "kernel {} with {threads} threads", k.name());
            let mut joined = s1.layers.clone();
            joined.extend(s2.layers.clone());
            assert_eq!(KvState { first_block: 0, pos: s1.pos, layers: joined }.hash(), sw.hash());
        }
    }
}

#[test]
fn the_engine_file_round_trips_with_padded_columns() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    model_dir(dir);
    let fresh = Model::load(dir, Options::default()).unwrap();
    assert_eq!(fresh.architecture(), "llama");
    let path = fresh.save_engine_file(dir).unwrap();
    // down_proj's 656 columns are stored as 672: 21 whole blocks, the last half zeros.
    let file = odin_engine::weights::TensorFile::open(&path).unwrap();
    let info = file.info("model.layers.0.mlp.down_proj.weight").unwrap();
    assert_eq!((info.dtype.as_str(), info.shape.as_slice()), ("I8", &[192usize, 672][..]));
    assert_eq!(file.info("model.layers.0.mlp.down_proj.weight.scale").unwrap().shape, vec![192, 21]);
    let loaded = Model::load(dir, Options::default()).unwrap();
    assert!(odin_engine::Shard::has_engine_file(dir).unwrap());
    let prompt = [10u32, 20, 30, 40, 50];
    let run = |m: &Model| {
        let mut st = m.start().unwrap();
        let mut out = m.next_logits(&prompt, &mut st).unwrap();
        out.extend(m.next_logits(&[3], &mut st).unwrap());
        out
    };
    assert_eq!(bits(&run(&fresh)), bits(&run(&loaded)));
    // Padding is invisible to the product: the same shard quantized on load gives the same bits.
    let float = LlamaShard::build(
        &ModelConfig::from_file(&dir.join("config.json")).unwrap(),
        ModelId([0; 32]),
        0..2,
        &Source::Float(odin_engine::weights::TensorFile::open(&dir.join("model.safetensors")).unwrap()),
        Options { threads: 2, kernel: Some(Kernel::Scalar), parallel_min_macs: 0 },
    )
    .unwrap();
    let mut st = float.new_state();
    let mut out = float.forward(Input::Tokens(&prompt), &mut st, Logits::Last).unwrap();
    out.extend(float.forward(Input::Tokens(&[3]), &mut st, Logits::Last).unwrap());
    assert_eq!(bits(&run(&fresh)), bits(&out));
}

#[test]
fn the_context_limit_and_foreign_caches_get_clear_errors_and_leave_the_state_alone() {
    let s = golden(0..2, Options::default());
    let max = llama_golden_config().max_position_embeddings;
    let mut st = s.new_state();
    s.forward(Input::Tokens(&vec![1u32; max - 2]), &mut st, Logits::Last).unwrap();
    let before = st.clone();
    match s.forward(Input::Tokens(&[1, 2, 3]), &mut st, Logits::Last) {
        Err(EngineError::BadInput(m)) => assert!(m.contains("at most 64") && m.contains("new session"), "{m}"),
        other => panic!("expected a context error, got {other:?}"),
    }
    assert_eq!(st, before);
    assert!(s.forward(Input::Tokens(&[1, 2]), &mut st, Logits::Last).is_ok(), "the last two positions still fit");
    // A cache whose length disagrees with its position, or that covers other layers.
    let last = golden(1..2, Options::default());
    let mut wrong = s.new_state();
    wrong.pos = 1;
    for (shard, st) in [(&s, &mut wrong), (&last, &mut s.new_state())] {
        match shard.forward(Input::Hidden(&[0.0; 64]), st, Logits::Last) {
            Err(EngineError::StateMismatch(m)) => assert!(m.contains("this shard holds"), "{m}"),
            other => panic!("expected a state mismatch, got {other:?}"),
        }
    }
    // The first layer takes tokens; a token outside the vocabulary is refused.
    let e = s.forward(Input::Tokens(&[96]), &mut s.new_state(), Logits::Last).unwrap_err();
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    // An RWKV-6 config is not loaded as a Llama shard.
    let rwkv = ModelConfig::Rwkv6(odin_engine::synthetic::golden_config());
    let e = LlamaShard::build(&rwkv, ModelId([0; 32]), 0..1, &Source::Memory(&Default::default()), Options::default());
    assert!(matches!(e, Err(EngineError::Unsupported(_))));
}

#[test]
fn generation_through_model_is_seeded_and_greedy_is_argmax() {
    let tmp = tempfile::tempdir().unwrap();
    model_dir(tmp.path());
    let m = Model::load(tmp.path(), Options::default()).unwrap();
    let prompt = [5u32, 6, 7, 8];
    let run = |cfg: Sampling| generate(&m, &prompt, 12, &mut Sampler::new(cfg), None, |_| true).unwrap().0;
    let sampled = Sampling { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 7 };
    assert_eq!(run(sampled), run(sampled));
    assert_ne!(run(sampled), run(Sampling { seed: 8, ..sampled }));
    let greedy = run(Sampling::GREEDY);
    assert_eq!(greedy.len(), 12);
    let mut st = m.start().unwrap();
    let mut logits = m.next_logits(&prompt, &mut st).unwrap();
    for &tok in &greedy {
        assert_eq!(tok, odin_engine::math::argmax(&logits) as u32);
        logits = m.next_logits(&[tok], &mut st).unwrap();
    }
}
