//! The `odin data` subcommands, run as a real process.

use std::process::Command;

fn odin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_odin"))
}

#[test]
fn without_python_the_build_says_so_and_writes_everything_else() {
    let tmp = tempfile::tempdir().unwrap();
    let empty_path = tmp.path().join("bin");
    std::fs::create_dir(&empty_path).unwrap();
    let out_dir = tmp.path().join("d");
    let out = odin()
        .args(["data", "build", "--preset", "tiny", "--seed", "5", "--out"])
        .arg(&out_dir)
        .env("PATH", &empty_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("python3") && stderr.contains("skipped"), "{stderr}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["python"], false);
    let tasks = manifest["splits"]["train"]["tasks"].as_object().unwrap();
    assert!(tasks.keys().all(|t| !t.starts_with("code")), "{:?}", tasks.keys());
    for family_task in ["add", "linear", "word"] {
        assert!(tasks[family_task]["verified"].as_u64().unwrap() > 0, "{family_task} missing");
    }

    let stats = odin().args(["data", "stats", "--json"]).arg(&out_dir).output().unwrap();
    assert!(stats.status.success(), "{}", String::from_utf8_lossy(&stats.stderr));
    let s: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(s["train_test_overlap"], 0);
    assert_eq!(s["families"].as_object().unwrap().len(), 3);
}

#[test]
fn bad_build_options_fail_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let out = odin()
        .args(["data", "build", "--preset", "tiny", "--max-duplicate-rate", "1.5", "--out"])
        .arg(tmp.path().join("d"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_duplicate_rate"));
    let out = odin().args(["data", "build", "--preset", "huge", "--out"]).arg(tmp.path().join("d")).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tiny"), "{}", String::from_utf8_lossy(&out.stderr));
}
