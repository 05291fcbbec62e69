//! `odin swarm --train --pipeline` and `odin node --stage` as real processes: stages on
//! loopback, each holding a block range of a model none of them holds whole, train it through
//! the backward relay; one replica is killed (SIGKILL) halfway and the chain goes on with the
//! other, and every step's loss is the one `odin train` gets on one machine.

use std::path::Path;
use std::process::Command;

fn odin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_odin"))
}

const STEPS: usize = 6;

fn setup(dir: &Path) -> std::path::PathBuf {
    let out = odin()
        .args(["data", "build", "--preset", "tiny", "--seed", "4", "--train", "300", "--out"])
        .arg(dir.join("data"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tok = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/odin-tiny/tokenizer.json");
    std::fs::write(
        dir.join("model.json"),
        r#"{"architecture":"rwkv6","decay_lora":8,"ffn_size":64,"group_norm_eps":0.00064,"head_size":16,
           "hidden_size":32,"layer_norm_eps":1e-5,"mix_lora":4,"num_layers":3,"vocab_size":1024}"#,
    )
    .unwrap();
    let cfg = dir.join("train.toml");
    std::fs::write(
        &cfg,
        format!(
            "seed = 3\nout = \"one\"\n[model]\nconfig = \"model.json\"\n[data]\ndir = \"data\"\ntokenizer = {:?}\n\
             [optim]\nlr = 1e-2\nmin_lr = 1e-3\nwarmup_steps = 2\n[batch]\nrows = 2\nseq_len = 64\n\
             [run]\nsteps = {STEPS}\ncheckpoint_every = 1000\nlog_every = 1\n",
            tok.display().to_string()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn a_pipeline_loses_a_replica_halfway_and_still_trains_as_one_machine_does() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path());
    let out = odin()
        .args(["swarm", "--train", "--pipeline", "3", "--replicas", "2", "--churn", "--json", "--config"])
        .arg(&cfg)
        .arg("--out")
        .arg(tmp.path().join("stages"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(v["chain"], serde_json::json!(["0..1 ×2", "1..2 ×2", "2..3 ×2"]), "{v}");
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), STEPS);
    // Exactly the killed replica was dropped, for its stream failing, and its range went on.
    let dropped = v["dropped"].as_array().unwrap();
    assert_eq!(dropped.len(), 1, "{v}");
    assert!(stderr.contains("killing stage-"), "{stderr}");
    assert!(dropped[0]["step"].as_u64().unwrap() >= (STEPS / 2) as u64, "{v}");
    assert_eq!(steps[0]["replicas"], serde_json::json!([2, 2, 2]));
    let last: Vec<u64> = steps[STEPS - 1]["replicas"].as_array().unwrap().iter().map(|r| r.as_u64().unwrap()).collect();
    assert_eq!(last.iter().sum::<u64>(), 5, "{v}");

    // One machine, the same config: every step's loss is the chain's.
    let one = odin().args(["train", "--quiet", "--config"]).arg(&cfg).output().unwrap();
    assert!(one.status.success(), "{}", String::from_utf8_lossy(&one.stderr));
    let metrics = std::fs::read_to_string(tmp.path().join("one/metrics.jsonl")).unwrap();
    let want: Vec<f64> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
        .collect();
    let got: Vec<f64> = steps.iter().map(|s| s["loss"].as_f64().unwrap()).collect();
    assert_eq!(want.len(), STEPS);
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-5, "the chain's losses {got:?} are not one machine's {want:?}");
    }
    assert!(got[STEPS - 1] < got[0], "the loss did not fall: {got:?}");
}

#[test]
fn a_stage_refuses_blocks_outside_the_model_and_a_swarm_a_layout_with_a_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = setup(tmp.path());
    let out = odin()
        .args(["node", "--stage"])
        .arg(&cfg)
        .args(["--blocks", "2..5", "--data-dir"])
        .arg(tmp.path().join("s"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2..5") && stderr.contains("0..3"), "{stderr}");
    let out = odin().args(["swarm", "--train", "--pipeline", "0..1,2..3", "--config"]).arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cover 0..3 in order"), "{stderr}");
}
