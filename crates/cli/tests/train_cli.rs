//! `odin train`, `odin eval` and `odin generate` as real processes on a tiny dataset and model:
//! the run's outputs, Ctrl-C checkpointing and resume, and clear errors on bad input.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn odin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_odin"))
}

fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A tiny dataset, tokenizer, model config and a training TOML for `steps` steps.
fn setup(dir: &Path, steps: u64) -> PathBuf {
    let data = dir.join("data");
    run_ok(odin().args(["data", "build", "--preset", "tiny", "--seed", "2", "--train", "400", "--out"]).arg(&data));
    let tok = data.join("tokenizer.json");
    run_ok(odin().args(["tokenizer", "train", "--vocab", "320", "--data"]).arg(&data).arg("--out").arg(&tok));
    std::fs::write(
        dir.join("model.json"),
        r#"{"architecture":"rwkv6","decay_lora":8,"ffn_size":96,"group_norm_eps":0.00064,"head_size":16,
           "hidden_size":32,"layer_norm_eps":1e-5,"mix_lora":4,"num_layers":2,"vocab_size":320}"#,
    )
    .unwrap();
    let toml = dir.join("train.toml");
    std::fs::write(
        &toml,
        format!(
            "seed = 3\nout = \"run\"\n[model]\nconfig = \"model.json\"\n[data]\ndir = \"data\"\n\
             tokenizer = \"data/tokenizer.json\"\n[optim]\nlr = 3e-3\nmin_lr = 3e-4\nwarmup_steps = 2\n\
             [batch]\nrows = 2\nseq_len = 96\n[run]\nsteps = {steps}\ncheckpoint_every = 1000\nlog_every = 1\n\
             eval_per_task = 1\n"
        ),
    )
    .unwrap();
    toml
}

#[test]
fn train_writes_model_report_and_curve_then_eval_and_generate_use_it() {
    let tmp = tempfile::tempdir().unwrap();
    let toml = setup(tmp.path(), 5);
    run_ok(odin().args(["train", "--quiet", "--config"]).arg(&toml));
    let run = tmp.path().join("run");
    for f in ["model/config.json", "model/model.safetensors", "model/tokenizer.json", "model/eval.json", "report.md"] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let png = std::fs::read(run.join("loss.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "loss.png is not a PNG");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 5);
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(report.contains("data manifest blake3") && report.contains("## Evaluation"), "{report}");

    // A finished run is not silently overwritten.
    let again = odin().args(["train", "--quiet", "--config"]).arg(&toml).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));

    let model = run.join("model");
    let out = run_ok(
        odin()
            .args(["eval", "--split", "test", "--per-task", "2", "--json", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(tmp.path().join("data")),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tasks = v["by_task"].as_object().unwrap();
    assert!(tasks.len() >= 5, "{tasks:?}");
    assert_eq!(v["overall"]["n"].as_u64().unwrap(), 2 * tasks.len() as u64);
    assert!(v["model_id"].as_str().unwrap().len() == 64);
    let out = run_ok(
        odin()
            .args(["eval", "--engine", "int8", "--split", "test", "--per-task", "2", "--json", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(tmp.path().join("data")),
    );
    let v8: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v8["engine"], "int8");
    assert_eq!(v8["overall"]["n"], v["overall"]["n"]);

    let g = |seed: &str| {
        run_ok(
            odin()
                .args(["generate", "--prompt", "work: 12+34=", "--max-tokens", "12", "--temperature", "1"])
                .args(["--seed", seed, "--model"])
                .arg(&model),
        )
        .stdout
    };
    assert_eq!(g("4"), g("4"), "the same seed must sample the same text");

    let bad =
        odin().args(["generate", "--prompt", "1+1=", "--engine", "int9", "--model"]).arg(&model).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--engine"));
    let bad = odin().args(["eval", "--data", "/nonexistent/odin-data", "--model"]).arg(&model).output().unwrap();
    assert!(!bad.status.success());
    assert!(!String::from_utf8_lossy(&bad.stderr).contains("panicked"));
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_resume_finishes_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let toml = setup(tmp.path(), 400);
    let mut child = odin()
        .args(["train", "--quiet", "--config"])
        .arg(&toml)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // Wait for the first step, then interrupt as a terminal would.
    let first = lines.by_ref().map(|l| l.unwrap()).find(|l| l.starts_with("step ")).expect("no step was logged");
    assert!(first.contains("loss"), "{first}");
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(child.wait().unwrap().success(), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("checkpoint saved") && l.contains("--resume")), "{rest:?}");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("run/checkpoint/state.json")).unwrap()).unwrap();
    let stopped_at = state["step"].as_u64().unwrap();
    assert!((1..400).contains(&stopped_at), "stopped at {stopped_at}");

    // Resume for two more steps in this sitting: the step count continues from the checkpoint.
    let out = run_ok(odin().args(["train", "--quiet", "--resume", "--max-steps", "2", "--config"]).arg(&toml));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("stopped at step {}", stopped_at + 2)), "{err}");
}

#[test]
fn bad_configs_and_devices_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let toml = setup(tmp.path(), 3);
    let cuda = odin().args(["train", "--device", "cuda", "--config"]).arg(&toml).output().unwrap();
    assert!(!cuda.status.success());
    let err = String::from_utf8_lossy(&cuda.stderr);
    if cfg!(feature = "cuda") {
        assert!(err.contains("CUDA"), "{err}");
    } else {
        assert!(err.contains("--features cuda"), "{err}");
    }
    let weird = odin().args(["train", "--device", "tpu", "--config"]).arg(&toml).output().unwrap();
    assert!(String::from_utf8_lossy(&weird.stderr).contains("cpu, cuda or cuda:N"));

    let text = std::fs::read_to_string(&toml).unwrap();
    for (bad, says) in [
        (text.replace("lr = 3e-3", "lr = -1.0"), "optim.lr"),
        (text.replace("rows = 2", "rows = 0"), "batch.rows"),
        (text.replace("seed = 3", "seed = 3\ncolour = 1"), "colour"),
        (text.replace("[data]", "[data]\nweights = { nosuchtask = 1.0 }"), "nosuchtask"),
        (text.replace("data/tokenizer.json", "data/missing.json"), "missing.json"),
    ] {
        let p = tmp.path().join("bad.toml");
        std::fs::write(&p, bad).unwrap();
        let out = odin().args(["train", "--quiet", "--config"]).arg(&p).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says) && !err.contains("panicked"), "{says}: {err}");
    }
    let missing = odin().args(["train", "--resume", "--config"]).arg(&toml).output().unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("without --resume"));
}
