//! `odin train`: run the local trainer with a progress bar, Ctrl-C checkpointing,
//! and the end-of-run model, loss curve and report.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use odin_train::{RunEnd, TrainConfig, Trainer};

/// `odin train` arguments.
#[derive(Args)]
pub struct TrainArgs {
    /// Training config (TOML): model, data, optimizer, schedule and budget.
    #[arg(long)]
    config: PathBuf,
    /// Continue from the run's last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Stop (with a checkpoint) after this many steps in this sitting.
    #[arg(long)]
    max_steps: Option<u64>,
    /// No progress bar (for logs).
    #[arg(long)]
    quiet: bool,
    /// Where to train: `cpu`, or `cuda` / `cuda:N` in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// At the end, print the mean loss on this many fixed batches of the test split (the
    /// held-out loss `odin swarm --train` reports, for comparing runs).
    #[arg(long, default_value_t = 0)]
    heldout_batches: usize,
    /// Train through a pipeline of stages instead of on this machine: the address, with its
    /// /p2p/ id, of an `odin node --stage` of the same config (repeatable). The driver finds
    /// the rest of the chain from their announcements and reads the batches here.
    #[arg(long, conflicts_with_all = ["resume", "device", "heldout_batches"])]
    pipeline: Vec<odin_net::Multiaddr>,
    /// With --pipeline: replicas per block range to wait for before the first step.
    #[arg(long, default_value_t = 1, requires = "pipeline")]
    replicas: usize,
    /// With --pipeline: seconds a stage may take on one request before it is dropped.
    #[arg(long, default_value_t = 120.0, requires = "pipeline")]
    stage_timeout: f64,
}

/// The device named by `--device`.
fn parse_device(name: &str) -> Result<candle_core::Device> {
    let ordinal = match name {
        "cpu" => return Ok(candle_core::Device::Cpu),
        "cuda" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => anyhow::bail!("--device {other:?}: use cpu, cuda or cuda:N"),
        },
    };
    if !cfg!(feature = "cuda") {
        anyhow::bail!(
            "this odin was built without CUDA; rebuild with `cargo build --release -p odin-cli --features cuda` \
             (needs the CUDA toolkit) or train with --device cpu"
        );
    }
    candle_core::Device::new_cuda(ordinal).with_context(|| format!("cannot open CUDA device {ordinal}"))
}

/// Run `odin train`.
pub fn train(a: TrainArgs) -> Result<()> {
    let mut cfg = TrainConfig::load(&a.config).with_context(|| format!("reading {}", a.config.display()))?;
    if !a.pipeline.is_empty() {
        if let Some(n) = a.max_steps {
            cfg.run.steps = n;
        }
        let drive = crate::pipeline_cmd::Drive {
            cfg,
            bootstrap: a.pipeline,
            replicas: a.replicas,
            stage_timeout: a.stage_timeout,
        };
        return crate::pipeline_cmd::run_driver(drive, false, &mut |_| {});
    }
    let out = cfg.out.clone();
    if !a.resume && out.join("checkpoint").exists() {
        anyhow::bail!(
            "{} already holds a checkpoint; pass --resume to continue it or choose another `out`",
            out.display()
        );
    }
    let device = parse_device(&a.device)?;
    let mut t = if a.resume { Trainer::resume_on(cfg, device)? } else { Trainer::new_on(cfg, device)? };
    let (n, skipped, tasks) = t.data_summary();
    eprintln!(
        "training on {n} records ({skipped} longer than seq_len skipped), tasks {tasks:?}; step {} of {}",
        t.step, t.cfg.run.steps
    );
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).context("cannot install the Ctrl-C handler")?;
    let total = t.cfg.run.steps;
    let bar = if a.quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(total) };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed} < {eta}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(t.step);
    let sitting_limit = a.max_steps.map(|m| t.step + m);
    let stop_in_loop = stop.clone();
    let log_every = t.cfg.run.log_every;
    let end = t.run(&stop, |s| {
        bar.set_position(s.step);
        bar.set_message(format!("loss {:.4} lr {:.2e} {:.0} tok/s", s.loss, s.lr, s.tokens_per_s));
        if a.quiet && s.step % log_every == 0 {
            eprintln!(
                "step {} loss {:.4} lr {:.2e} gnorm {:.3} {:.0} tok/s",
                s.step, s.loss, s.lr, s.grad_norm, s.tokens_per_s
            );
        }
        if sitting_limit.is_some_and(|l| s.step >= l) {
            stop_in_loop.store(true, Ordering::SeqCst);
        }
    })?;
    bar.finish_and_clear();
    let config_text = std::fs::read_to_string(&a.config).unwrap_or_default();
    match end {
        RunEnd::Interrupted => {
            odin_train::report::write_report(&t, &config_text, "(unfinished run)", None)?;
            eprintln!(
                "stopped at step {}; checkpoint saved in {}; continue with --resume",
                t.step,
                out.join("checkpoint").display()
            );
        }
        RunEnd::Finished => {
            if t.cfg.run.eval_per_task > 0 {
                eprintln!("evaluating {} records per task on the test split", t.cfg.run.eval_per_task);
            }
            let (id, _) = odin_train::report::finish_run(&t, &config_text)?;
            if a.heldout_batches > 0 {
                println!("held-out loss: {:.6}", t.heldout_loss(a.heldout_batches)?);
            }
            eprintln!(
                "finished {} steps; model {id} in {}; report in {}",
                t.step,
                out.join("model").display(),
                out.join("report.md").display()
            );
        }
    }
    Ok(())
}

/// `odin eval` arguments.
#[derive(Args)]
pub struct EvalArgs {
    /// Model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Dataset directory.
    #[arg(long)]
    data: PathBuf,
    /// Split: test, heldout-family or long.
    #[arg(long, default_value = "test")]
    split: String,
    /// At most this many records per task (a seeded sample).
    #[arg(long)]
    per_task: Option<usize>,
    /// Only these tasks (comma separated).
    #[arg(long, value_delimiter = ',')]
    tasks: Vec<String>,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Seed of the per-task sample.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Also write every record's output and score to this JSONL file.
    #[arg(long)]
    outcomes: Option<PathBuf>,
    /// Engine: f32 (the model layer, the reference) or int8 (the deterministic engine).
    #[arg(long, default_value = "f32", value_parser = ["f32", "int8"])]
    engine: String,
}

fn load_model(dir: &std::path::Path) -> Result<odin_train::generate::LoadedModel> {
    odin_train::generate::load_model(dir).with_context(|| format!("cannot load model directory {}", dir.display()))
}

/// Run `odin eval`.
pub fn eval(a: EvalArgs) -> Result<()> {
    let manifest = odin_data::read_manifest(&a.data)?;
    let records = odin_data::read_split(&a.data, &manifest, &a.split)?;
    let opts = odin_train::eval::EvalOptions { per_task: a.per_task, tasks: a.tasks, batch: a.batch, seed: a.seed };
    let sandbox = odin_data::sandbox::Sandbox::detect();
    let (report, id) = if a.engine == "int8" {
        let tk = odin_text::load_tokenizer(&a.model)?;
        let engine = crate::engine_cmd::load_int8(&a.model, 1)?;
        let id = engine.model_id();
        (odin_train::eval::evaluate(&engine, &tk, &a.split, &records, &opts, sandbox.as_ref())?, id)
    } else {
        let m = load_model(&a.model)?;
        (odin_train::eval::evaluate(&m.shard, &m.tokenizer, &a.split, &records, &opts, sandbox.as_ref())?, m.dir.id)
    };
    if let Some(p) = &a.outcomes {
        let text: String =
            report.outcomes.iter().filter_map(|o| serde_json::to_string(o).ok()).map(|l| l + "\n").collect();
        std::fs::write(p, text).with_context(|| format!("cannot write {}", p.display()))?;
    }
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["model_id"] = serde_json::Value::String(id.to_string());
        v["engine"] = serde_json::Value::String(a.engine.clone());
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("model {id} (engine {})\n", a.engine);
        print!("{}", report.markdown());
        println!("\n{} records in {:.1}s", report.overall.n, report.seconds);
    }
    Ok(())
}
