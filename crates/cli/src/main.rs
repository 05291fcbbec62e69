//! `odin`: the one binary of ODIN. Subcommands only; the work lives in the
//! library crates.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use odin_model::{init_weights, model_id, ModelConfig, ModelDir};

mod collab_cmd;
mod engine_cmd;
mod ledger_cmd;
mod net_cmd;
mod pipeline_cmd;
mod train_cmd;
mod verify_cmd;

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
    /// Build, inspect and check verified synthetic datasets.
    #[command(subcommand)]
    Data(DataCmd),
    /// Train tokenizers.
    #[command(subcommand)]
    Tokenizer(TokenizerCmd),
    /// Train a model on a dataset (config in TOML; Ctrl-C saves a checkpoint).
    Train(train_cmd::TrainArgs),
    /// Exact-match accuracy of a model on a dataset split, with 95% intervals.
    Eval(train_cmd::EvalArgs),
    /// Continue a prompt with a model, streaming tokens (int8 engine by default).
    Generate(engine_cmd::GenerateArgs),
    /// Quantize a model to int8 blocks and save the engine file next to it.
    Quantize(engine_cmd::QuantizeArgs),
    /// Write a model for another runtime: llama.cpp GGUF or web-rwkv .st.
    #[command(subcommand)]
    Export(engine_cmd::ExportCmd),
    /// Decode and prefill speed of the int8 engine, side by side with f32 and llama.cpp.
    Bench(engine_cmd::BenchArgs),
    /// Join or start a network and serve a range of the model's blocks (or train with --train).
    Node(Box<net_cmd::NodeArgs>),
    /// A local network of N node processes answering a prompt (the demo), serving an API with
    /// --serve, or training together with --train.
    Swarm(Box<net_cmd::SwarmArgs>),
    /// Chat with a node's API from the terminal (--prompt for one shot).
    Chat(net_cmd::ChatArgs),
    /// Loss curves of several runs on one PNG (`odin swarm --train --json` summaries or
    /// `odin train` metrics.jsonl files).
    Curves(collab_cmd::CurvesArgs),
    /// What a network identity costs: solve the identity puzzle `--runs` times at `--bits`
    /// and print the keys tried and the seconds, median and spread.
    Identity(IdentityArgs),
    /// Read this node's ledger: entries, balances, a full check, export and import.
    #[command(subcommand)]
    Ledger(ledger_cmd::LedgerCmd),
    /// The f32 path's speed for `odin bench` (runs in a child process).
    #[command(hide = true)]
    BenchF32(engine_cmd::BenchF32Args),
}

#[derive(Subcommand)]
enum DataCmd {
    /// Generate, verify and write a dataset directory.
    Build(BuildArgs),
    /// Collapse guards: mix, coverage, diversity, near-duplicates, train/test overlap.
    Stats {
        /// Dataset directory.
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print records of a split.
    Show {
        /// Dataset directory.
        dir: PathBuf,
        /// Split: train, test, heldout-family or long.
        #[arg(long, default_value = "train")]
        split: String,
        /// Only this task (add, sub, mul, div, chain, linear, system2, quadratic, word, code_output, code_write).
        #[arg(long)]
        task: Option<String>,
        /// How many records.
        #[arg(short = 'n', long, default_value_t = 5)]
        count: usize,
        /// Print JSONL.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct BuildArgs {
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// tiny (seconds, for tests) or default (1M training records).
    #[arg(long, default_value = "default")]
    preset: String,
    /// Master seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Override the number of training records.
    #[arg(long)]
    train: Option<usize>,
    /// Longest operand in train/test, in digits (1-20).
    #[arg(long)]
    train_max_len: Option<usize>,
    /// Shortest operand of the long split.
    #[arg(long)]
    long_min_len: Option<usize>,
    /// Longest operand of the long split.
    #[arg(long)]
    long_max_len: Option<usize>,
    /// Write numbers least significant digit first.
    #[arg(long)]
    reversed: bool,
    /// Write half of the Python output-prediction records with an execution trace (one line per
    /// loop iteration) before the printed value; their prompts start with `# trace`.
    #[arg(long)]
    trace: bool,
    /// Fail when more than this fraction of a task's training drafts were exact duplicates.
    #[arg(long)]
    max_duplicate_rate: Option<f64>,
    /// Keep the training prompts of this dataset out of the test, held-out-family and long splits
    /// (repeatable): fresh test data for a model trained on it.
    #[arg(long, value_name = "DIR")]
    exclude: Vec<PathBuf>,
    /// Print the manifest as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum TokenizerCmd {
    /// Train a digit-splitting byte-level BPE tokenizer on a dataset's training split.
    Train {
        /// Dataset directory.
        #[arg(long)]
        data: PathBuf,
        /// Vocabulary size, special and byte tokens included.
        #[arg(long, default_value_t = 2048)]
        vocab: usize,
        /// Output tokenizer.json.
        #[arg(long)]
        out: PathBuf,
    },
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
        Command::Ledger(c) => ledger_cmd::run(c),
        Command::Model(ModelCmd::Info(a)) => model_info(a),
        Command::Model(ModelCmd::Init(a)) => model_init(a),
        Command::Data(DataCmd::Build(a)) => data_build(a),
        Command::Data(DataCmd::Stats { dir, json }) => data_stats(&dir, json),
        Command::Data(DataCmd::Show { dir, split, task, count, json }) => {
            data_show(&dir, &split, task.as_deref(), count, json)
        }
        Command::Tokenizer(TokenizerCmd::Train { data, vocab, out }) => tokenizer_train(&data, vocab, &out),
        Command::Train(a) => train_cmd::train(a),
        Command::Eval(a) => train_cmd::eval(a),
        Command::Generate(a) => engine_cmd::generate(a),
        Command::Quantize(a) => engine_cmd::quantize(a),
        Command::Export(c) => engine_cmd::export(c),
        Command::Bench(a) => engine_cmd::bench(a),
        Command::BenchF32(a) => engine_cmd::bench_f32(a),
        Command::Node(a) => net_cmd::node(*a),
        Command::Swarm(a) => net_cmd::swarm(*a),
        Command::Chat(a) => net_cmd::chat(a),
        Command::Curves(a) => collab_cmd::curves(a),
        Command::Identity(a) => identity(a),
        Command::Model(ModelCmd::Id { dir }) => {
            println!("{}", model_id(&dir).with_context(|| format!("cannot hash model directory {}", dir.display()))?);
            Ok(())
        }
    }
}

#[derive(clap::Args)]
struct IdentityArgs {
    /// Leading zero bits asked of blake3(blake3(public key)).
    #[arg(long, default_value_t = odin_net::puzzle::DEFAULT_IDENTITY_BITS)]
    bits: u32,
    /// Identities to solve.
    #[arg(long, default_value_t = 9)]
    runs: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn identity(a: IdentityArgs) -> Result<()> {
    if a.bits > 40 || a.runs == 0 {
        bail!("--bits must be at most 40 (2^40 keys is days) and --runs at least 1");
    }
    let mut runs: Vec<(u64, f64)> = (0..a.runs)
        .map(|_| {
            let t = std::time::Instant::now();
            let (_, tries) = odin_net::puzzle::solve(a.bits);
            (tries, t.elapsed().as_secs_f64())
        })
        .collect();
    let keys_per_s = runs.iter().map(|r| r.0 as f64).sum::<f64>() / runs.iter().map(|r| r.1).sum::<f64>().max(1e-9);
    runs.sort_by(|x, y| x.1.total_cmp(&y.1));
    let median = runs[runs.len() / 2].1;
    // The expected cost is 2^bits keys at the measured rate; single runs spread widely around it.
    let expected_s = (1u64 << a.bits) as f64 / keys_per_s;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"bits": a.bits, "runs": runs.len(), "keys_per_s": keys_per_s, "median_s": median,
                "min_s": runs[0].1, "max_s": runs[runs.len() - 1].1, "expected_s": expected_s})
        );
    } else {
        println!(
            "{}-bit identity puzzle: {:.0} keys/s on one core; expected {expected_s:.2} s per identity \
             ({} runs: median {median:.2} s, {:.2}–{:.2} s)",
            a.bits,
            keys_per_s,
            runs.len(),
            runs[0].1,
            runs[runs.len() - 1].1
        );
    }
    Ok(())
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

fn data_build(a: BuildArgs) -> Result<()> {
    let mut o = odin_data::BuildOptions::preset(&a.preset, a.seed)?;
    if let Some(n) = a.train {
        o.train = n;
    }
    if let Some(n) = a.train_max_len {
        o.train_max_len = n;
    }
    if let Some(n) = a.long_min_len {
        o.long_min_len = n;
    }
    if let Some(n) = a.long_max_len {
        o.long_max_len = n;
    }
    if let Some(r) = a.max_duplicate_rate {
        o.max_duplicate_rate = r;
    }
    o.reversed = a.reversed;
    o.trace = a.trace;
    if odin_data::sandbox::Sandbox::detect().is_none() {
        eprintln!("warning: python3 (CPython 3) not found: the code family is skipped; install python3 to build it");
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg:28} [{bar:30}] {pos}/{len} ({elapsed}, eta {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let progress = |split: &str, task: &str, done: usize, want: usize| {
        bar.set_length(want as u64);
        bar.set_position(done as u64);
        bar.set_message(format!("{split}/{task}"));
    };
    let m = odin_data::build_excluding(&o, &a.out, &a.exclude, &progress)
        .with_context(|| format!("building {}", a.out.display()))?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&m)?);
        return Ok(());
    }
    println!("built {} in {:.1}s (python: {})", a.out.display(), started.elapsed().as_secs_f64(), m.python);
    for (name, s) in &m.splits {
        let rejected: usize = s.tasks.values().map(|t| t.rejected).sum();
        let dups: usize = s.tasks.values().map(|t| t.duplicates).sum();
        println!("  {name:15} {:>9} records  ({rejected} rejected by verifiers, {dups} duplicates dropped)", s.records);
    }
    println!("  test records dropped for matching train: {}", m.overlap_dropped);
    for (dir, e) in a.exclude.iter().zip(&m.excluded) {
        println!("  dropped for matching the training prompts of {}: {}", dir.display(), e.dropped);
    }
    Ok(())
}

fn data_stats(dir: &Path, json: bool) -> Result<()> {
    let m = odin_data::read_manifest(dir)?;
    let s = odin_data::stats::compute(dir, &m)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("records            {:?}", s.records);
    println!("families (train)   {:?}", s.families);
    println!("tasks (train)      {:?}", s.task_mix);
    println!("operand lengths    {:?}", s.operand_lengths);
    println!("carry chains       {:?}", s.carry_chains);
    println!("distinct-1/2/3     {:.4} / {:.4} / {:.4}", s.distinct_n[0], s.distinct_n[1], s.distinct_n[2]);
    println!("compression ratio  {:.4}", s.compression_ratio);
    println!("near-dup rate      {:.4} (MinHash, {} sampled prompts)", s.near_duplicate_rate, s.sample_size);
    println!("exact dups (train) {}", s.train_exact_duplicates);
    println!("train/test overlap {}", s.train_test_overlap);
    Ok(())
}

fn data_show(dir: &Path, split: &str, task: Option<&str>, count: usize, json: bool) -> Result<()> {
    let m = odin_data::read_manifest(dir)?;
    let recs = odin_data::read_split(dir, &m, split)?;
    for r in recs.iter().filter(|r| task.is_none_or(|t| r.task == t)).take(count) {
        if json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            println!("--- {} [{} / difficulty {}]", r.id, r.task, r.difficulty);
            println!("{}\n>>>\n{}", r.prompt, r.completion);
            for t in &r.tests {
                println!("    {t}");
            }
        }
    }
    Ok(())
}

fn tokenizer_train(data: &Path, vocab: usize, out: &Path) -> Result<()> {
    let m = odin_data::read_manifest(data)?;
    let train = odin_data::read_split(data, &m, "train")?;
    let tk = odin_data::tokenizer::train(&train, vocab)?;
    odin_data::tokenizer::save(&tk, out)?;
    let mut checked = 0;
    for split in m.splits.keys() {
        for r in odin_data::read_split(data, &m, split)? {
            for text in [&r.prompt, &r.completion] {
                if !odin_data::tokenizer::round_trips(&tk, text)? {
                    bail!("tokenizer does not round-trip record {}", r.id);
                }
                checked += 1;
            }
        }
    }
    println!("wrote {} ({} tokens); decode(encode(x)) == x on {checked} texts", out.display(), tk.get_vocab_size(true));
    Ok(())
}
