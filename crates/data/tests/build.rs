//! Whole builds of the tiny preset: determinism, split hygiene, verifiers,
//! tamper detection and the tokenizer round trip.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use odin_data::record::prompt_hash;
use odin_data::sandbox::Sandbox;
use odin_data::{
    algebra, arith, build, build_excluding, code, read_manifest, read_split, word, BuildOptions, Manifest, Record,
};

fn opts(seed: u64) -> BuildOptions {
    let mut o = BuildOptions::preset("tiny", seed).unwrap();
    o.train = 1200;
    o
}

fn quiet(_: &str, _: &str, _: usize, _: usize) {}

/// One shared build for the read-only tests.
fn shared() -> &'static (tempfile::TempDir, Manifest) {
    static CELL: OnceLock<(tempfile::TempDir, Manifest)> = OnceLock::new();
    CELL.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let m = build(&opts(11), dir.path(), &quiet).unwrap();
        (dir, m)
    })
}

fn all(dir: &Path, m: &Manifest, split: &str) -> Vec<Record> {
    read_split(dir, m, split).unwrap()
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p: PathBuf| (p.file_name().unwrap().to_string_lossy().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn same_seed_and_options_give_byte_identical_output() {
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build(&opts(3), a.path(), &quiet).unwrap();
    build(&opts(3), b.path(), &quiet).unwrap();
    build(&opts(4), c.path(), &quiet).unwrap();
    let (fa, fb, fc) = (files(a.path()), files(b.path()), files(c.path()));
    assert!(fa.len() >= 5, "manifest plus a shard per split");
    assert_eq!(fa, fb, "same seed, same bytes");
    assert_ne!(fa, fc, "another seed, other data");
}

#[test]
fn a_build_can_keep_another_datasets_training_prompts_out_of_its_tests() {
    // Two-digit operands, so that two seeds' arithmetic prompts collide.
    let short = |seed| BuildOptions { train_max_len: 2, max_duplicate_rate: 1.0, ..opts(seed) };
    let dir = tempfile::tempdir().unwrap();
    let m = &build(&short(11), dir.path(), &quiet).unwrap();
    let theirs: std::collections::HashSet<u128> =
        all(dir.path(), m, "train").iter().map(|r| prompt_hash(&r.prompt)).collect();
    let eval_hashes = |d: &Path, m: &Manifest| -> Vec<u128> {
        ["test", "heldout-family", "long"].iter().flat_map(|s| all(d, m, s)).map(|r| prompt_hash(&r.prompt)).collect()
    };
    // Another seed alone shares some short test prompts with seed 11's training split...
    let (plain, fresh) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mp = build(&short(12), plain.path(), &quiet).unwrap();
    let shared_before = eval_hashes(plain.path(), &mp).iter().filter(|h| theirs.contains(h)).count();
    assert!(shared_before > 0, "two-digit arithmetic should collide");
    // ...and none once that dataset is excluded; the manifest pins what was excluded.
    let mf = build_excluding(&short(12), fresh.path(), &[dir.path().to_path_buf()], &quiet).unwrap();
    assert_eq!(eval_hashes(fresh.path(), &mf).iter().filter(|h| theirs.contains(h)).count(), 0);
    assert_eq!(mf.excluded.len(), 1);
    let e = &mf.excluded[0];
    assert_eq!((e.seed, e.prompts), (11, theirs.len()));
    assert_eq!(e.train_shards, m.splits["train"].shards);
    assert!(e.dropped >= shared_before, "{} dropped, {shared_before} shared", e.dropped);
    assert_eq!(all(fresh.path(), &mf, "test").len(), all(plain.path(), &mp, "test").len(), "still full size");
    assert_eq!(read_manifest(fresh.path()).unwrap().excluded[0].dropped, e.dropped);
    // A dataset to exclude that is not there is an error, not a silent overlap.
    let missing = fresh.path().join("nope");
    assert!(build_excluding(&short(12), plain.path(), &[missing], &quiet).is_err());
}

#[test]
fn splits_are_disjoint_and_shaped_as_promised() {
    let (dir, m) = shared();
    let train = all(dir.path(), m, "train");
    let train_hashes: std::collections::HashSet<u128> = train.iter().map(|r| prompt_hash(&r.prompt)).collect();
    assert_eq!(train_hashes.len(), train.len(), "no exact duplicates within train");
    for split in ["test", "heldout-family", "long"] {
        let rs = all(dir.path(), m, split);
        assert!(!rs.is_empty(), "{split} is empty");
        assert!(rs.iter().all(|r| !train_hashes.contains(&prompt_hash(&r.prompt))), "{split} leaks into train");
        assert!(rs.iter().all(|r| r.split == split));
    }
    let template =
        |r: &Record| r.meta.get("template").or(r.meta.get("kind")).and_then(|v| v.as_str()).map(str::to_string);
    let heldout: Vec<&str> = word::HELDOUT_TEMPLATES.iter().chain(&code::HELDOUT_KINDS).copied().collect();
    assert!(train.iter().filter_map(template).all(|t| !heldout.contains(&t.as_str())), "held-out templates in train");
    let h = all(dir.path(), m, "heldout-family");
    assert!(h.iter().filter_map(template).all(|t| heldout.contains(&t.as_str())));
    let max_len = |r: &Record| r.meta["lens"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).max().unwrap();
    assert!(train.iter().filter(|r| r.family == "arithmetic" && r.task != "chain").all(|r| max_len(r) <= 10));
    assert!(all(dir.path(), m, "long").iter().all(|r| (11..=15).contains(&max_len(r))));
    assert_eq!(m.stats["train_test_overlap"], 0);
    let fams: std::collections::BTreeSet<&str> = train.iter().map(|r| r.family.as_str()).collect();
    assert!(fams.len() >= 3, "{fams:?}");
}

#[test]
fn every_record_passes_an_independent_verifier_and_corruptions_fail() {
    let (dir, m) = shared();
    let sb = Sandbox::detect();
    for split in ["train", "test", "heldout-family", "long"] {
        let rs = all(dir.path(), m, split);
        let check = |r: &Record, answer: &str, completion: &str| -> bool {
            match r.family.as_str() {
                "arithmetic" => arith::verify(&r.prompt, completion, answer).is_ok(),
                "algebra" => algebra::verify(&r.task, &r.prompt, completion, answer).is_ok(),
                "word" => word::verify(&r.prompt, completion, answer).is_ok(),
                _ => true,
            }
        };
        for r in rs.iter().filter(|r| r.family != "code") {
            assert!(check(r, &r.answer, &r.completion), "{} fails its verifier", r.id);
            // Corrupt the answer consistently in completion and answer: the verifier must notice.
            let bad = format!("{}1", r.answer);
            let completion = format!("{}{}", &r.completion[..r.completion.len() - r.answer.len()], bad);
            assert!(!check(r, &bad, &completion), "{} accepts a corrupted answer", r.id);
        }
        let code: Vec<&Record> = rs.iter().filter(|r| r.family == "code").collect();
        if let (Some(sb), false) = (&sb, code.is_empty()) {
            let mut jobs = Vec::new();
            for (i, r) in code.iter().enumerate() {
                jobs.push(code::verification_job(2 * i, &r.task, &r.prompt, &r.completion, &r.tests).unwrap());
                // The corrupted twin: a wrong output, or a body that returns a constant.
                let bad_c = if r.task == "code_output" { r.completion.clone() } else { "    return 12345".to_string() };
                jobs.push(code::verification_job(2 * i + 1, &r.task, &r.prompt, &bad_c, &r.tests).unwrap());
            }
            let res = sb.run(&jobs).unwrap();
            for (i, r) in code.iter().enumerate() {
                assert!(code::judge(&r.task, &r.answer, &r.completion, r.tests.len(), &res[2 * i]), "{} fails", r.id);
                let bad_answer = format!("{}0", r.answer);
                let bad_ok = if r.task == "code_output" {
                    code::judge(&r.task, &bad_answer, &r.completion, r.tests.len(), &res[2 * i])
                } else {
                    code::judge(&r.task, &r.answer, &r.completion, r.tests.len(), &res[2 * i + 1])
                };
                assert!(!bad_ok, "{} accepts a corrupted record", r.id);
            }
        }
    }
}

#[test]
fn traced_output_records_are_checked_line_by_line() {
    let Some(sb) = Sandbox::detect() else {
        eprintln!("python3 not found: skipping the traced-data check");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(5);
    o.train = 600;
    o.trace = true;
    let m = build(&o, dir.path(), &quiet).unwrap();
    assert!(m.options.trace);
    let rs: Vec<Record> = all(dir.path(), &m, "train").into_iter().filter(|r| r.task == "code_output").collect();
    let traced: Vec<&Record> = rs.iter().filter(|r| r.meta["form"] == "trace").collect();
    let plain = rs.iter().filter(|r| r.meta["form"] == "answer").count();
    assert!(traced.len() >= 5 && plain >= 5, "{} traced, {plain} answer-only", traced.len());
    // An iteration line per loop pass: a string of n characters gives n lines.
    let one = traced.iter().find(|r| r.prompt.contains("for ch in s:")).expect("a traced string record");
    let arg = one.prompt.rsplit_once("print(f(").unwrap().1.trim_end_matches("))");
    let n_chars = arg.trim_matches('"').chars().count();
    assert_eq!(one.completion.lines().count(), n_chars + 1, "{}", one.completion);
    assert!(one.completion.lines().next().is_none_or(|l| l.starts_with("ch='")), "{}", one.completion);
    let mut jobs = Vec::new();
    for (i, r) in traced.iter().enumerate() {
        assert!(r.prompt.starts_with(code::TRACE_TAG));
        jobs.push(code::verification_job(i, &r.task, &r.prompt, &r.completion, &r.tests).unwrap());
    }
    let res = sb.run(&jobs).unwrap();
    let mut corrupted = 0;
    for (r, got) in traced.iter().zip(&res) {
        assert!(code::judge(&r.task, &r.answer, &r.completion, 0, got), "{} fails its trace", r.id);
        // A wrong digit in the first trace line must be caught even with the right answer.
        let Some((first, rest)) = r.completion.split_once('\n') else { continue };
        let Some(pos) = first.rfind(|c: char| c.is_ascii_digit()) else { continue };
        let d = first.as_bytes()[pos];
        let bad = format!(
            "{}{}{}\n{rest}",
            &first[..pos],
            if d == b'9' { '0' } else { char::from(d + 1) },
            &first[pos + 1..]
        );
        assert!(!code::judge(&r.task, &r.answer, &bad, 0, got), "{} accepts a corrupted trace", r.id);
        corrupted += 1;
    }
    assert!(corrupted > 0);
    // The option is off by default, and then no record carries a trace.
    let (sdir, sm) = shared();
    assert!(all(sdir.path(), sm, "train").iter().all(|r| !r.prompt.starts_with(code::TRACE_TAG)));
}

#[test]
fn a_modified_shard_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(5);
    o.train = 300;
    let m = build(&o, dir.path(), &quiet).unwrap();
    let shard = dir.path().join(&m.splits["test"].shards[0].file);
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[10] ^= 0x20;
    std::fs::write(&shard, bytes).unwrap();
    let err = read_split(dir.path(), &read_manifest(dir.path()).unwrap(), "test").unwrap_err().to_string();
    assert!(err.contains("does not match the hash"), "{err}");
    assert!(read_split(dir.path(), &m, "nope").unwrap_err().to_string().contains("no split"));
}

#[test]
fn tokenizer_round_trips_every_record_and_splits_digits() {
    let (dir, m) = shared();
    let train = all(dir.path(), m, "train");
    let tk = odin_data::tokenizer::train(&train, 400).unwrap();
    let path = dir.path().join("tok-test.json");
    odin_data::tokenizer::save(&tk, &path).unwrap();
    let tk = odin_text::tokenizer_from_file(&path).unwrap();
    for split in m.splits.keys() {
        for r in all(dir.path(), m, split) {
            for t in [&r.prompt, &r.completion] {
                assert!(odin_data::tokenizer::round_trips(&tk, t).unwrap(), "{}", r.id);
            }
        }
    }
    let enc = tk.encode("12345+678=", false).unwrap();
    let digits: Vec<&String> = enc.get_tokens().iter().filter(|t| t.chars().any(|c| c.is_ascii_digit())).collect();
    assert!(digits.iter().all(|t| t.chars().count() == 1), "{digits:?}");
    for (i, s) in odin_data::tokenizer::SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(tk.token_to_id(s), Some(i as u32));
    }
    assert!(odin_data::tokenizer::train(&train, 100).is_err(), "too small a vocab is refused");
}
