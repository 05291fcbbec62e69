//! `odin quantize` and `odin generate`: the int8 engine (and the f32 reference) from the command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use odin_engine::{Decoder, Model, Options, Sampler, Sampling, Shard};
use odin_text::{load_tokenizer, prompt_ids, special, TextStream, Tokenizer};

/// Load the whole model in `dir` (either architecture) into the int8 engine, `threads` threads per product.
pub fn load_int8(dir: &Path, threads: usize) -> Result<Model> {
    Model::load(dir, Options::threads(threads))
        .with_context(|| format!("cannot load {} into the int8 engine", dir.display()))
}

/// Load the RWKV-6 model in `dir` whole, for the exports (llama.cpp's and web-rwkv's RWKV-6 layouts).
fn load_rwkv6(dir: &Path) -> Result<Shard> {
    match load_int8(dir, 1)? {
        Model::Rwkv6(s) => Ok(s),
        other => bail!(
            "{} is a {} model; `odin export` and llama.cpp comparisons cover RWKV-6 models only",
            dir.display(),
            other.architecture()
        ),
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
    let shard =
        Model::load(&a.model, Options::default()).with_context(|| format!("cannot quantize {}", a.model.display()))?;
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

/// How the next token is chosen; shared by `odin generate` and `odin swarm`, which must agree.
#[derive(Args, Clone, Copy)]
pub struct SamplingArgs {
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Keep only the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: u32,
    /// Nucleus sampling threshold (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Sampler seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    /// The sampling settings, after checking the ranges.
    pub fn config(&self) -> Result<Sampling> {
        let s = Sampling { temperature: self.temperature, top_k: self.top_k, top_p: self.top_p, seed: self.seed };
        s.check().map_err(|e| anyhow::anyhow!("--{}", e.replace('_', "-")))?;
        Ok(s)
    }
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
    #[command(flatten)]
    sampling: SamplingArgs,
    /// int8: the deterministic engine. f32: the model layer (the numerical reference).
    #[arg(long, default_value = "int8", value_parser = ["int8", "f32"])]
    engine: String,
    /// Threads for the int8 engine's matrix products (0: one per core). The output never depends on it.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print no speed line on stderr.
    #[arg(long)]
    quiet: bool,
    /// Print one JSON object (text, prompt and generated token ids, speed) instead of streaming text.
    #[arg(long)]
    json: bool,
}

/// Run `odin generate`, streaming text to stdout and speed to stderr.
pub fn generate(a: GenerateArgs) -> Result<()> {
    let sampling = a.sampling.config()?;
    if a.engine == "f32" {
        if a.json {
            bail!("--json is available with --engine int8");
        }
        let m = odin_train::generate::load_model(&a.model)
            .with_context(|| format!("cannot load model directory {}", a.model.display()))?;
        let ids = prompt_ids(&m.tokenizer, &a.prompt)?;
        let t = Instant::now();
        decode(&m.reference(), &m.tokenizer, &ids, a.max_tokens, sampling, true)?;
        if !a.quiet {
            eprintln!("[f32 model layer] {:.2}s", t.elapsed().as_secs_f64());
        }
        return Ok(());
    }
    let tk = load_tokenizer(&a.model)?;
    let ids = prompt_ids(&tk, &a.prompt)?;
    let shard = load_int8(&a.model, a.threads)?;
    let run = decode(&shard, &tk, &ids, a.max_tokens, sampling, !a.json)?;
    let rate = |n: usize, d: std::time::Duration| n as f64 / d.as_secs_f64().max(1e-9);
    if a.json {
        let v = serde_json::json!({
            "model_id": shard.model_id().to_string(), "architecture": shard.architecture(), "engine": "int8",
            "kernel": shard.exec().kernel().name(),
            "threads": shard.exec().threads(), "prompt_ids": ids, "ids": run.ids, "text": run.text,
            "prefill_tok_s": rate(ids.len(), run.prefill), "decode_tok_s": rate(run.ids.len(), run.decode),
        });
        println!("{v}");
        return Ok(());
    }
    if !a.quiet {
        eprintln!(
            "[int8 {}, {} thread(s)] prefill {} tokens at {:.0} tok/s; decode {} tokens at {:.0} tok/s",
            shard.exec().kernel().name(),
            shard.exec().threads(),
            ids.len(),
            rate(ids.len(), run.prefill),
            run.ids.len(),
            rate(run.ids.len(), run.decode)
        );
    }
    Ok(())
}

/// What one `odin generate` produced, and how long its two phases took.
struct Decoded {
    ids: Vec<u32>,
    text: String,
    /// Until the first token was chosen (the prompt's forward pass).
    prefill: Duration,
    /// From then to the end (one forward pass per generated token).
    decode: Duration,
}

/// The engine's decode loop on `model` until `<|eos|>`, the text streamed to stdout when `print`.
fn decode<D: Decoder>(model: &D, tk: &Tokenizer, ids: &[u32], max: usize, s: Sampling, print: bool) -> Result<Decoded>
where
    D::Error: std::error::Error + Send + Sync + 'static,
{
    let mut stdout = std::io::stdout();
    let mut emit = |piece: &str| {
        if print {
            // A closed stdout (a pipe to `head`) ends the output, not the run.
            let _ = stdout.write_all(piece.as_bytes()).and_then(|()| stdout.flush());
        }
    };
    let mut stream = TextStream::new(tk);
    let mut failed = None;
    let t0 = Instant::now();
    let mut first = None;
    let (ids, _) = odin_engine::generate(model, ids, max, &mut Sampler::new(s), Some(special::EOS), |tok| {
        first.get_or_insert_with(Instant::now);
        match stream.push(tok) {
            Ok(piece) => {
                emit(piece.as_deref().unwrap_or(""));
                true
            }
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    let end = Instant::now();
    let first = first.unwrap_or(end);
    let (rest, text) = stream.finish()?;
    emit(&rest);
    if print {
        println!();
    }
    Ok(Decoded { ids, text, prefill: first - t0, decode: end - first })
}

/// `odin export` formats.
#[derive(clap::Subcommand)]
pub enum ExportCmd {
    /// llama.cpp GGUF (`rwkv6` architecture, Q8_0: the engine's own int8 weights).
    Gguf(ExportArgs),
    /// web-rwkv `.st` (safetensors, f16) for WebGPU runtimes.
    St(ExportArgs),
}

/// `odin export` arguments.
#[derive(Args)]
pub struct ExportArgs {
    /// Model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
}

/// Run `odin export`.
pub fn export(cmd: ExportCmd) -> Result<()> {
    let (a, kind) = match &cmd {
        ExportCmd::Gguf(a) => (a, "gguf"),
        ExportCmd::St(a) => (a, "st"),
    };
    let shard = load_rwkv6(&a.model)?;
    let t = Instant::now();
    match kind {
        "gguf" => odin_engine::export::write_gguf(&shard, &a.model.join("tokenizer.json"), &a.out),
        _ => odin_engine::export::write_st(&shard, &a.out),
    }
    .with_context(|| format!("cannot export {} to {}", a.model.display(), a.out.display()))?;
    let size = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({kind}, {:.1} MB) for model {} in {:.2}s",
        a.out.display(),
        size as f64 / 1e6,
        shard.model_id(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `odin bench` arguments.
#[derive(Args)]
pub struct BenchArgs {
    /// Model directory (run `odin quantize` first to time loading from the engine file).
    #[arg(long)]
    model: PathBuf,
    /// Thread counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Prompt length for prefill.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens decoded after the prompt.
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Repetitions; medians are reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Also time the f32 candle path (in a child process per thread count).
    #[arg(long)]
    f32: bool,
    /// Also run llama.cpp's `llama-bench` at this path on the GGUF export, same threads.
    #[arg(long)]
    llama_bench: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `odin bench-f32` (hidden): the f32 path's speed, in its own process so its thread count is its own.
#[derive(Args)]
pub struct BenchF32Args {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    prompt_tokens: usize,
    #[arg(long)]
    decode_tokens: usize,
    #[arg(long)]
    runs: usize,
}

/// Run `odin bench-f32`: print `{"prefill_tok_s":..,"decode_tok_s":..}`.
pub fn bench_f32(a: BenchF32Args) -> Result<()> {
    let speed = odin_train::generate::measure(&a.model, a.prompt_tokens, a.decode_tokens, a.runs)?;
    println!("{}", serde_json::to_string(&speed)?);
    Ok(())
}

/// One row of the bench table.
#[derive(serde::Serialize)]
struct Row {
    engine: String,
    threads: usize,
    prefill_tok_s: f64,
    decode_tok_s: f64,
}

/// llama.cpp's `llama-bench` on `gguf`. `huge`: the weights read into memory (`-lm none`) that
/// glibc puts on transparent huge pages, as ours are, instead of llama.cpp's default mmap of the
/// file on 4 KiB pages; the bench runs both and compares against the faster.
fn llama_bench(exe: &Path, gguf: &Path, a: &BenchArgs, threads: usize, huge: bool) -> Result<Row> {
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("-m").arg(gguf).args(["-p", &a.prompt_tokens.to_string(), "-n", &a.decode_tokens.to_string()]).args([
        "-t",
        &threads.to_string(),
        "-r",
        &a.runs.to_string(),
        "-o",
        "json",
    ]);
    if huge {
        cmd.args(["-lm", "none"]).env("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1");
    }
    let out = cmd.output().with_context(|| format!("cannot run {}", exe.display()))?;
    if !out.status.success() {
        bail!("llama-bench failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("llama-bench printed no JSON")?;
    let (mut pre, mut dec) = (0.0, 0.0);
    for r in v.as_array().into_iter().flatten() {
        let ts = r["avg_ts"].as_f64().unwrap_or(0.0);
        if r["n_gen"].as_u64().unwrap_or(0) > 0 {
            dec = ts;
        } else {
            pre = ts;
        }
    }
    let engine = if huge { "llama.cpp Q8_0 (huge pages)" } else { "llama.cpp Q8_0 (mmap)" };
    Ok(Row { engine: engine.into(), threads, prefill_tok_s: pre, decode_tok_s: dec })
}

/// Run `odin bench`.
pub fn bench(a: BenchArgs) -> Result<()> {
    let mut rows = Vec::new();
    let mut bytes_per_token = 0;
    let mut kernel = String::new();
    let t_load = Instant::now();
    let mut load_s = 0.0;
    for &t in &a.threads {
        let shard = load_int8(&a.model, t)?;
        if load_s == 0.0 {
            load_s = t_load.elapsed().as_secs_f64();
        }
        bytes_per_token = shard.bytes_per_token();
        kernel = shard.exec().kernel().name().to_string();
        let s = odin_engine::bench::measure(&shard, a.prompt_tokens, a.decode_tokens, a.runs)?;
        rows.push(Row {
            engine: format!("odin int8 ({kernel})"),
            threads: t,
            prefill_tok_s: s.prefill_tok_s,
            decode_tok_s: s.decode_tok_s,
        });
    }
    // Read before anything else allocates: the engine's own peak.
    let peak = odin_engine::bench::peak_rss();
    let engine_file = a.model.join(odin_engine::ENGINE_FILE);
    let disk = std::fs::metadata(&engine_file).map(|m| m.len()).ok();
    let mut roofline = Vec::new();
    for &t in &a.threads {
        let bw = odin_engine::bench::read_bandwidth(t);
        roofline.push(
            serde_json::json!({"threads": t, "bandwidth_gb_s": bw / 1e9, "decode_tok_s": bw / bytes_per_token as f64}),
        );
    }
    if a.f32 {
        for &t in &a.threads {
            let exe = std::env::current_exe()?;
            let out = std::process::Command::new(exe)
                .args(["bench-f32", "--model"])
                .arg(&a.model)
                .args([
                    "--prompt-tokens",
                    &a.prompt_tokens.to_string(),
                    "--decode-tokens",
                    &a.decode_tokens.to_string(),
                ])
                .args(["--runs", &a.runs.to_string()])
                .env("RAYON_NUM_THREADS", t.to_string())
                .output()?;
            if !out.status.success() {
                bail!("the f32 bench failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            rows.push(Row {
                engine: "candle f32".into(),
                threads: t,
                prefill_tok_s: v["prefill_tok_s"].as_f64().unwrap_or(0.0),
                decode_tok_s: v["decode_tok_s"].as_f64().unwrap_or(0.0),
            });
        }
    }
    if let Some(exe) = &a.llama_bench {
        let dir = tempfile_dir()?;
        let gguf = dir.join("model.gguf");
        let shard = load_rwkv6(&a.model)?;
        odin_engine::export::write_gguf(&shard, &a.model.join("tokenizer.json"), &gguf)?;
        for &t in &a.threads {
            for huge in [false, true] {
                rows.push(llama_bench(exe, &gguf, &a, t, huge)?);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    if a.json {
        let v = serde_json::json!({
            "model": a.model, "kernel": kernel, "prompt_tokens": a.prompt_tokens, "decode_tokens": a.decode_tokens,
            "runs": a.runs, "rows": rows, "weights_bytes_per_token": bytes_per_token, "roofline": roofline,
            "peak_rss_bytes": peak, "engine_file_bytes": disk, "load_seconds": load_s,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "model {} · prompt {} tokens · decode {} tokens · median of {} runs",
        a.model.display(),
        a.prompt_tokens,
        a.decode_tokens,
        a.runs
    );
    println!("\n| engine | threads | prefill tok/s | decode tok/s |\n|---|---:|---:|---:|");
    for r in &rows {
        println!("| {} | {} | {:.0} | {:.0} |", r.engine, r.threads, r.prefill_tok_s, r.decode_tok_s);
    }
    println!("\nweights read per decoded token: {:.2} MB", bytes_per_token as f64 / 1e6);
    for (r, t) in roofline.iter().zip(&a.threads) {
        let achieved = rows.iter().find(|x| x.threads == *t).map_or(0.0, |x| x.decode_tok_s);
        let roof = r["decode_tok_s"].as_f64().unwrap_or(f64::NAN);
        println!(
            "roofline at {t} thread(s): {:.1} GB/s read → {:.0} tok/s; int8 decode reaches {:.0}%",
            r["bandwidth_gb_s"].as_f64().unwrap_or(0.0),
            roof,
            100.0 * achieved / roof
        );
    }
    if let Some(p) = peak {
        println!("peak memory (engine runs): {:.1} MB", p as f64 / 1e6);
    }
    if let Some(d) = disk {
        println!("engine file on disk: {:.1} MB", d as f64 / 1e6);
    }
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("odin-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
