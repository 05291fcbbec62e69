//! `odin quantize` and `odin generate`: the int8 engine (and the f32 reference) from the command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use odin_engine::{Options, Sampler, SamplerConfig, Shard};
use odin_train::data::{prompt_ids, special};
use odin_train::generate::{load_tokenizer, TextStream};

/// The int8 engine as an evaluation backend (the train layer does not import the engine).
pub struct Int8(pub Shard);

impl Int8 {
    /// Load the whole model in `dir` with `threads` threads per product.
    pub fn load(dir: &Path, threads: usize) -> Result<Self> {
        let shard = Shard::load(dir, None, Options::threads(threads))
            .with_context(|| format!("cannot load {} into the int8 engine", dir.display()))?;
        Ok(Self(shard))
    }
}

impl odin_train::eval::Greedy for Int8 {
    fn greedy(&self, prompts: &[Vec<u32>], max_new: usize) -> odin_train::Result<Vec<Vec<u32>>> {
        odin_engine::greedy_many(&self.0, prompts, max_new, special::EOS)
            .map_err(|e| odin_train::TrainError::Data(format!("int8 engine: {e}")))
    }
}

/// `odin quantize` arguments.
#[derive(Args)]
pub struct QuantizeArgs {
    /// Model directory (config.json, model.safetensors).
    #[arg(long)]
    model: PathBuf,
}

/// Write `model.int8.safetensors` next to the model.
pub fn quantize(a: QuantizeArgs) -> Result<()> {
    let t = Instant::now();
    let shard = Shard::load(&a.model, None, Options::default())
        .with_context(|| format!("cannot quantize {}", a.model.display()))?;
    let path = shard.save_engine_file(&a.model)?;
    let size = std::fs::metadata(&path)?.len();
    let f32_size = std::fs::metadata(a.model.join("model.safetensors")).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({:.1} MB, {:.1}x smaller than f32) for model {} in {:.2}s",
        path.display(),
        size as f64 / 1e6,
        f32_size as f64 / size.max(1) as f64,
        shard.model_id(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `odin generate` arguments.
#[derive(Args)]
pub struct GenerateArgs {
    /// Model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// The task prompt, e.g. "work: 123+989=" or "Solve for x: 3x + 4 = x - 6".
    #[arg(long)]
    prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Keep only the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling threshold (1: off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// int8: the deterministic engine. f32: the model layer (the numerical reference).
    #[arg(long, default_value = "int8", value_parser = ["int8", "f32"])]
    engine: String,
    /// Threads for the int8 engine's matrix products (0: one per core). The output never depends on it.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print no speed line on stderr.
    #[arg(long)]
    quiet: bool,
}

/// Run `odin generate`, streaming text to stdout and speed to stderr.
pub fn generate(a: GenerateArgs) -> Result<()> {
    if !(a.temperature >= 0.0 && a.temperature.is_finite() && a.top_p > 0.0 && a.top_p <= 1.0) {
        bail!("--temperature must be >= 0 and --top-p within (0, 1]");
    }
    let mut stdout = std::io::stdout();
    let mut emit = |piece: &str| {
        let _ = stdout.write_all(piece.as_bytes());
        let _ = stdout.flush();
    };
    if a.engine == "f32" {
        let m = odin_train::generate::load_model(&a.model)
            .with_context(|| format!("cannot load model directory {}", a.model.display()))?;
        let s =
            odin_train::generate::Sampling { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed };
        let t = Instant::now();
        odin_train::generate::generate(&m.shard, &m.tokenizer, &a.prompt, a.max_tokens, &s, &mut emit)?;
        println!();
        if !a.quiet {
            eprintln!("[f32 model layer] {:.2}s", t.elapsed().as_secs_f64());
        }
        return Ok(());
    }
    let tk = load_tokenizer(&a.model)?;
    let shard = Int8::load(&a.model, a.threads)?.0;
    let ids = prompt_ids(&tk, &a.prompt)?;
    let mut sampler =
        Sampler::new(SamplerConfig { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed });
    let mut state = shard.new_state();
    let t0 = Instant::now();
    let mut logits = shard.forward(odin_engine::Input::Tokens(&ids), &mut state, odin_engine::Logits::Last)?;
    let prefill = t0.elapsed();
    let t1 = Instant::now();
    let mut stream = TextStream::new(&tk);
    let mut steps = 0usize;
    for _ in 0..a.max_tokens {
        let tok = sampler.sample(&logits);
        if tok == special::EOS {
            break;
        }
        if let Some(piece) = stream.push(tok)? {
            emit(&piece);
        }
        logits = shard.forward(odin_engine::Input::Tokens(&[tok]), &mut state, odin_engine::Logits::Last)?;
        steps += 1;
    }
    let decode = t1.elapsed();
    let (rest, _) = stream.finish()?;
    emit(&rest);
    println!();
    if !a.quiet {
        let rate = |n: usize, d: std::time::Duration| n as f64 / d.as_secs_f64().max(1e-9);
        eprintln!(
            "[int8 {}, {} thread(s)] prefill {} tokens at {:.0} tok/s; decode {} tokens at {:.0} tok/s",
            shard.exec().kernel().name(),
            shard.exec().threads(),
            ids.len(),
            rate(ids.len(), prefill),
            steps,
            rate(steps, decode)
        );
    }
    Ok(())
}
