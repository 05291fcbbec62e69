//! `odin`: the one binary of ODIN. Subcommands only; the work lives in the
//! library crates.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use odin_model::{init_weights, model_id, ModelConfig, ModelDir};

/// ODIN: create, train, serve and verify an efficient language model together.
#[derive(Parser)]
#[command(name = "odin", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect and create model directories.
    #[command(subcommand)]
    Model(ModelCmd),
}

#[derive(Subcommand)]
enum ModelCmd {
    /// Architecture, parameter counts and bytes per block of a config or model.
    Info(InfoArgs),
    /// Create a model directory with freshly initialised weights (official RWKV-6 recipe).
    Init(InitArgs),
    /// Print a model directory's content id (blake3 of its canonical files).
    Id {
        /// Model directory (config.json, model.safetensors, optional tokenizer.json).
        dir: PathBuf,
    },
}

#[derive(Args)]
struct InfoArgs {
    /// A config.json file.
    #[arg(long, conflicts_with = "model", required_unless_present = "model")]
    config: Option<PathBuf>,
    /// A model directory (its config.json is read; its id is printed too).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct InitArgs {
    /// A config.json file describing the model.
    #[arg(long)]
    config: PathBuf,
    /// Directory to create.
    #[arg(long)]
    out: PathBuf,
    /// Seed of the initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Overwrite an existing model in --out.
    #[arg(long)]
    force: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("ODIN_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Model(ModelCmd::Info(a)) => model_info(a),
        Command::Model(ModelCmd::Init(a)) => model_init(a),
        Command::Model(ModelCmd::Id { dir }) => {
            println!("{}", model_id(&dir).with_context(|| format!("cannot hash model directory {}", dir.display()))?);
            Ok(())
        }
    }
}

fn load_config(path: &Path) -> Result<ModelConfig> {
    ModelConfig::from_file(path).with_context(|| format!("cannot use {} as a model config", path.display()))
}

fn model_info(a: InfoArgs) -> Result<()> {
    let (cfg, id) = match (&a.config, &a.model) {
        (Some(c), _) => (load_config(c)?, None),
        (None, Some(dir)) => (load_config(&dir.join("config.json"))?, Some(model_id(dir)?.to_string())),
        (None, None) => bail!("give --config FILE or --model DIR"),
    };
    let counts = cfg.param_counts();
    if a.json {
        let out = serde_json::json!({
            "architecture": cfg.architecture(),
            "config": cfg,
            "id": id,
            "params": counts,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let mb = |b: usize| b as f64 / 1e6;
    println!("architecture     {}", cfg.architecture());
    if let Some(id) = id {
        println!("id               {id}");
    }
    println!("blocks           {}", cfg.num_layers());
    println!("hidden size      {}", cfg.hidden_size());
    println!("vocab size       {}", cfg.vocab_size());
    println!("parameters       {} total", counts.total);
    println!("                 {} non-embedding (blocks)", counts.non_embedding);
    println!("                 {} embedding, {} head", counts.embedding, counts.head);
    println!(
        "embedding bytes  {:.2} MB f32, {:.2} MB int8",
        mb(counts.embedding_bytes.0),
        mb(counts.embedding_bytes.1)
    );
    println!("head bytes       {:.2} MB f32, {:.2} MB int8", mb(counts.head_bytes.0), mb(counts.head_bytes.1));
    println!("block  params      f32 MB   int8 MB");
    for (i, p) in counts.per_block.iter().enumerate() {
        println!("{i:>5}  {p:>9}  {:>8.2}  {:>8.2}", mb(counts.block_bytes_f32[i]), mb(counts.block_bytes_int8[i]));
    }
    Ok(())
}

fn model_init(a: InitArgs) -> Result<()> {
    let cfg = load_config(&a.config)?;
    if a.out.join("model.safetensors").exists() && !a.force {
        bail!("{} already holds a model; pass --force to overwrite it", a.out.display());
    }
    let weights = init_weights(&cfg, a.seed, &candle_core::Device::Cpu)?;
    let id = ModelDir::save(&cfg, &weights, None, &a.out)
        .with_context(|| format!("cannot write model directory {}", a.out.display()))?;
    println!("{id}");
    Ok(())
}
