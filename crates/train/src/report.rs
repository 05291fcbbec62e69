//! The end-of-run report: config, data hash, time, tokens, loss curve and final evaluation.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{io_err, Result, TrainError};
use crate::eval::{EvalOptions, EvalReport};
use crate::trainer::{read_metrics, Trainer};

/// Finish a completed run: export `out/model`, evaluate it on the test split when
/// `run.eval_per_task` is set (writing `eval.json` / `eval.md` beside it), then write the report.
pub fn finish_run(t: &Trainer, config_toml: &str) -> Result<(odin_model::ModelId, Option<EvalReport>)> {
    let model_dir = t.cfg.out.join("model");
    let id = t.export(&model_dir)?;
    let eval = if t.cfg.run.eval_per_task > 0 {
        let m = crate::generate::load_model(&model_dir)?;
        let data = &t.cfg.data.dir;
        let records = odin_data::read_split(data, &odin_data::read_manifest(data)?, "test")?;
        let opts = EvalOptions { per_task: Some(t.cfg.run.eval_per_task), seed: t.cfg.seed, ..Default::default() };
        let sb = odin_data::sandbox::Sandbox::detect();
        let e = crate::eval::evaluate(&m.shard, &m.tokenizer, "test", &records, &opts, sb.as_ref())?;
        write_eval(&model_dir, &e)?;
        Some(e)
    } else {
        None
    };
    write_report(t, config_toml, &id.to_string(), eval.as_ref())?;
    Ok((id, eval))
}

/// Write `out/loss.png` and `out/report.md` for `t`, with `eval` when one was run.
pub fn write_report(t: &Trainer, config_toml: &str, model_id: &str, eval: Option<&EvalReport>) -> Result<()> {
    let out = &t.cfg.out;
    let metrics = read_metrics(out)?;
    let points: Vec<(u64, f64)> = metrics.iter().map(|s| (s.step, s.loss)).collect();
    let png = out.join("loss.png");
    let plotted = crate::plot::loss_curve_png(&png, "odin train: answer-token loss", &points);
    let mut s = String::new();
    let _ = writeln!(s, "# Training report\n");
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| model id | `{model_id}` |");
    let _ = writeln!(
        s,
        "| architecture | {} ({} blocks, vocab {}) |",
        arch(&t.model_cfg),
        t.model_cfg.num_layers(),
        t.model_cfg.vocab_size()
    );
    let _ = writeln!(s, "| parameters | {} |", t.model_cfg.param_counts().total);
    let _ = writeln!(s, "| data manifest blake3 | `{}` |", t.data_hash);
    let _ = writeln!(s, "| steps | {} |", t.step);
    let _ = writeln!(s, "| tokens trained on | {} |", t.tokens_seen);
    let _ = writeln!(s, "| training time | {:.0} s ({:.2} h) |", t.train_seconds, t.train_seconds / 3600.0);
    let _ = writeln!(s, "| mean tokens/s | {:.0} |", t.tokens_seen as f64 / t.train_seconds.max(1e-9));
    if let Some(last) = metrics.last() {
        let tail: Vec<f64> = metrics.iter().rev().take(20).map(|m| m.loss).collect();
        let _ = writeln!(
            s,
            "| final loss (mean of last {} logged) | {:.4} (step {}) |",
            tail.len(),
            tail.iter().sum::<f64>() / tail.len() as f64,
            last.step
        );
    }
    match plotted {
        Ok(()) => {
            let _ = writeln!(s, "\n![loss](loss.png)\n");
        }
        Err(e) => {
            let _ = writeln!(s, "\n(no loss curve: {e})\n");
        }
    }
    if let Some(e) = eval {
        let _ = writeln!(s, "## Evaluation\n\n{}", e.markdown());
    }
    let _ = writeln!(s, "## Config\n\n```toml\n{}\n```", config_toml.trim_end());
    let p = out.join("report.md");
    std::fs::write(&p, s).map_err(io_err(&p))?;
    Ok(())
}

fn arch(c: &odin_model::ModelConfig) -> &'static str {
    match c {
        odin_model::ModelConfig::Rwkv6(_) => "RWKV-6",
        odin_model::ModelConfig::Llama(_) => "Llama-style",
    }
}

/// Write an evaluation as `eval.json` and `eval.md` into `dir`.
pub fn write_eval(dir: &Path, e: &EvalReport) -> Result<()> {
    let j = dir.join("eval.json");
    let text = serde_json::to_string_pretty(e).map_err(|err| TrainError::Data(format!("cannot encode eval: {err}")))?;
    std::fs::write(&j, text).map_err(io_err(&j))?;
    let m = dir.join("eval.md");
    std::fs::write(&m, format!("# Evaluation\n\n{}", e.markdown())).map_err(io_err(&m))
}
