//! Run an `odin export st` file in web-rwkv and print, for each prompt, one JSON line:
//! `{"prompt", "prompt_ids", "logits" (last position, f32), "ids" (greedy), "adapter"}`.
//!
//! Usage: web-rwkv-check MODEL.st TOKENIZER.json [--f32] [--max-tokens N] PROMPT...
//! A prompt is wrapped the way ODIN's `prompt_ids` does: `<|bos|> <|prompt|> PROMPT <|answer|>`
//! (ids 0, 3, ..., 4); generation stops at `<|eos|>` (id 1) or after N tokens.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use half::f16;
use safetensors::SafeTensors;
use web_rwkv::{
    context::{ContextBuilder, InstanceExt},
    runtime::{
        infer::{Rnn, RnnInput, RnnInputBatch, RnnOption},
        loader::Loader,
        model::{Bundle as _, ContextAutoLimits, ModelBuilder, ModelVersion, State},
        v6, Runtime, TokioRuntime,
    },
};

const BOS: u32 = 0;
const EOS: u32 = 1;
const PROMPT: u32 = 3;
const ANSWER: u32 = 4;

/// The first index of the largest value, as ODIN's greedy decoding picks it.
fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best as u32
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let model_path = PathBuf::from(args.next().ok_or_else(|| anyhow!("usage: MODEL.st TOKENIZER.json [--f32] [--max-tokens N] PROMPT..."))?);
    let tok_path = PathBuf::from(args.next().ok_or_else(|| anyhow!("missing TOKENIZER.json"))?);
    let (mut use_f32, mut max_tokens, mut prompts) = (false, 16usize, Vec::new());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--f32" => use_f32 = true,
            "--max-tokens" => max_tokens = args.next().ok_or_else(|| anyhow!("--max-tokens N"))?.parse()?,
            _ => prompts.push(a),
        }
    }
    if prompts.is_empty() {
        bail!("no prompt");
    }
    let tokenizer = tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| anyhow!("{e}"))?;

    let data = std::fs::read(&model_path)?;
    let model = SafeTensors::deserialize(&data)?;
    let info = Loader::info(&model)?;
    eprintln!("{info:?}");
    if info.version != ModelVersion::V6 {
        bail!("expected an RWKV-6 model, web-rwkv detected {:?}", info.version);
    }

    let instance = wgpu::Instance::default();
    let adapter = instance.adapter(wgpu::PowerPreference::HighPerformance).await?;
    let adapter_info = adapter.get_info();
    eprintln!("adapter: {} ({:?}, {:?})", adapter_info.name, adapter_info.backend, adapter_info.device_type);
    let context = ContextBuilder::new(adapter).auto_limits(&info).build().await?;

    let model = ModelBuilder::new(&context, model).build_v6().await?;
    let (runtime, state): (Box<dyn Runtime<Rnn>>, Box<dyn State>) = if use_f32 {
        let bundle = v6::Bundle::<f32>::new(model, 1);
        let state = bundle.state();
        (Box::new(TokioRuntime::new(bundle).await), Box::new(state))
    } else {
        let bundle = v6::Bundle::<f16>::new(model, 1);
        let state = bundle.state();
        (Box::new(TokioRuntime::new(bundle).await), Box::new(state))
    };

    for prompt in prompts {
        let enc = tokenizer.encode(prompt.as_str(), false).map_err(|e| anyhow!("{e}"))?;
        let mut ids = vec![BOS, PROMPT];
        ids.extend(enc.get_ids());
        ids.push(ANSWER);
        // A fresh (initial) state per prompt.
        state.load(state.init(), 0)?;
        let mut input = RnnInput::new(vec![RnnInputBatch::new(ids.clone(), RnnOption::Last)], 128);
        let (mut first_logits, mut out_ids) = (None, Vec::new());
        while out_ids.len() < max_tokens {
            let (rest, output) = runtime.infer(input).await?;
            input = rest;
            let logits = output[0].0.clone();
            if logits.size() == 0 {
                continue; // still reading the prompt
            }
            let logits = logits.to_vec();
            let next = argmax(&logits);
            if first_logits.is_none() {
                first_logits = Some(logits);
            }
            out_ids.push(next);
            if next == EOS {
                break;
            }
            input.batches[0].push(next);
        }
        let text = tokenizer.decode(&out_ids, true).map_err(|e| anyhow!("{e}"))?;
        let line = serde_json::json!({
            "prompt": prompt, "prompt_ids": ids, "ids": out_ids, "text": text,
            "logits": first_logits, "adapter": adapter_info.name, "activations": if use_f32 { "f32" } else { "f16" },
        });
        println!("{line}");
    }
    Ok(())
}
