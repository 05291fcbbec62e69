//! Small deterministic Python functions from a grammar over int, str, list
//! and dict operations, for two tasks: predict a call's output, and write
//! the function from its signature, docstring and two examples (judged by
//! hidden tests). Outputs come from running CPython, never from Rust.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::record::Draft;
use crate::sandbox::{Job, Sandbox};

/// Function kinds used for train and test.
pub const TRAIN_KINDS: [&str; 3] = ["list", "string", "digits"];
/// Function kinds that appear only in the `heldout-family` split.
pub const HELDOUT_KINDS: [&str; 1] = ["dict"];
/// Hidden tests per code-writing task.
pub const HIDDEN_TESTS: usize = 5;

/// A generated function and the inputs it will be called with.
#[derive(Debug, Clone)]
pub struct Spec {
    kind: &'static str,
    level: u8,
    header: String,
    doc: String,
    body: String,
    args: Vec<String>,
}

impl Spec {
    fn code(&self) -> String {
        format!("{}\n{}", self.header, self.body)
    }
}

fn pick<'a>(rng: &mut ChaCha8Rng, xs: &[&'a str]) -> &'a str {
    xs[rng.random_range(0..xs.len())]
}

fn int_list(rng: &mut ChaCha8Rng, level: u8) -> String {
    let n = rng.random_range(0..=3 + 2 * level as usize);
    let hi = [0, 10, 50, 500][level as usize];
    let v: Vec<String> = (0..n).map(|_| rng.random_range(-hi / 2..=hi).to_string()).collect();
    format!("[{}]", v.join(", "))
}

fn text(rng: &mut ChaCha8Rng, level: u8) -> String {
    const ALPHA: &[u8] = b"abcdeiouxyzABXYZ 0123456789";
    let n = rng.random_range(0..=4 + 3 * level as usize);
    let s: String = (0..n).map(|_| char::from(ALPHA[rng.random_range(0..ALPHA.len())])).collect();
    format!("{s:?}")
}

/// Generate one function of `kind` with `1 + 1 + HIDDEN_TESTS` distinct-ish inputs.
pub fn spec(kind: &'static str, rng: &mut ChaCha8Rng) -> Spec {
    let level: u8 = rng.random_range(1..=3);
    let k = rng.random_range(2..=9);
    let (param, mut body, doc) = match kind {
        "list" => {
            let cond = pick(rng, &["", "x % 2 == 0", "x % 2 == 1", "x > K", "x < K", "x % K == 0"])
                .replace('K', &k.to_string());
            let map = pick(rng, &["x", "x * K", "x + K", "x * x", "x - K", "abs(x)"]).replace('K', &k.to_string());
            let red = pick(rng, &["sum", "count", "max", "min", "list", "sorted list", "reversed list", "product"]);
            let (init, update, ret): (&str, Vec<String>, &str) = match red {
                "sum" => ("acc = 0", vec![format!("acc = acc + {map}")], "acc"),
                "count" => ("acc = 0", vec!["acc = acc + 1".into()], "acc"),
                "max" | "min" => (
                    "acc = None",
                    vec![
                        format!("v = {map}"),
                        format!("if acc is None or v {} acc:", if red == "max" { ">" } else { "<" }),
                        "    acc = v".into(),
                    ],
                    "acc if acc is not None else 0",
                ),
                "list" | "sorted list" => {
                    ("acc = []", vec![format!("acc.append({map})")], if red == "list" { "acc" } else { "sorted(acc)" })
                }
                "reversed list" => ("acc = []", vec![format!("acc.insert(0, {map})")], "acc"),
                _ => ("acc = 1", vec![format!("acc = acc * ({map}) % 1000")], "acc"),
            };
            let mut lines = vec![format!("    {init}"), "    for x in xs:".into()];
            let ind = if cond.is_empty() { "        " } else { "            " };
            if !cond.is_empty() {
                lines.push(format!("        if {cond}:"));
            }
            lines.extend(update.iter().map(|u| format!("{ind}{u}")));
            lines.push(format!("    return {ret}"));
            let which = if cond.is_empty() { "every x in xs".to_string() } else { format!("each x in xs with {cond}") };
            let what = match red {
                "count" => format!("Return how many elements are {which}."),
                "product" => format!("Return the product of {map} over {which}, modulo 1000."),
                "max" | "min" => format!("Return the {red} of {map} over {which}, or 0 if there is none."),
                r => format!("Return the {r} of {map} over {which}."),
            };
            ("xs", lines, what)
        }
        "string" => {
            let cond =
                pick(rng, &["", "ch.isdigit()", "ch in \"aeiou\"", "ch.isupper()", "ch != \" \"", "ch.isalpha()"]);
            let map = pick(rng, &["ch", "ch.upper()", "ch.lower()", "ch * 2"]);
            let ret = pick(rng, &["out", "out[::-1]", "len(out)", "out.upper()"]);
            let mut lines = vec!["    out = \"\"".to_string(), "    for ch in s:".into()];
            if cond.is_empty() {
                lines.push(format!("        out = out + {map}"));
            } else {
                lines.push(format!("        if {cond}:"));
                lines.push(format!("            out = out + {map}"));
            }
            lines.push(format!("    return {ret}"));
            let which = if cond.is_empty() {
                "every character ch of s".to_string()
            } else {
                format!("each character ch of s with {cond}")
            };
            ("s", lines, format!("Build out from {map} for {which}, then return {ret}."))
        }
        "digits" => {
            let cond = pick(rng, &["", "d % 2 == 0", "d > K", "d != 0"]).replace('K', &(k % 8).to_string());
            let map = pick(rng, &["d", "d * d", "d + K"]).replace('K', &k.to_string());
            let (init, op) = if rng.random_bool(0.7) { ("0", "+") } else { ("1", "*") };
            let mut lines = vec![format!("    total = {init}"), "    while n > 0:".into(), "        d = n % 10".into()];
            if cond.is_empty() {
                lines.push(format!("        total = total {op} ({map})"));
            } else {
                lines.push(format!("        if {cond}:"));
                lines.push(format!("            total = total {op} ({map})"));
            }
            lines.push("        n = n // 10".into());
            lines.push("    return total".into());
            let which = if cond.is_empty() {
                "every decimal digit d of n".to_string()
            } else {
                format!("each decimal digit d of n with {cond}")
            };
            let agg = if op == "+" { "sum" } else { "product" };
            ("n", lines, format!("Return the {agg} of {map} over {which} (starting from {init})."))
        }
        _ => {
            let key = pick(rng, &["x % K", "x > K", "len(str(abs(x)))", "x // K"]).replace('K', &k.to_string());
            let ret = pick(
                rng,
                &["counts", "len(counts)", "max(counts.values()) if counts else 0", "sorted(counts.items())"],
            );
            let lines = vec![
                "    counts = {}".to_string(),
                "    for x in xs:".into(),
                format!("        key = {key}"),
                "        counts[key] = counts.get(key, 0) + 1".into(),
                format!("    return {ret}"),
            ];
            ("xs", lines, format!("Count the elements x of xs by the key {key} in a dict counts, then return {ret}."))
        }
    };
    if body.is_empty() {
        body.push("    return None".into());
    }
    let args = (0..2 + HIDDEN_TESTS)
        .map(|_| match kind {
            "string" => text(rng, level),
            "digits" => rng.random_range(0..10u64.pow(2 + 2 * level as u32)).to_string(),
            _ => int_list(rng, level),
        })
        .collect();
    Spec { kind, level, header: format!("def f({param}):"), doc, body: body.join("\n"), args }
}

/// Run every spec in the sandbox and turn the successful ones into drafts:
/// `code_output` (predict `f(arg)`) when `write` is false, else `code_write`.
/// Specs whose calls fail, time out or all return the same value are dropped.
pub fn realize(specs: Vec<Spec>, write: bool, sb: &Sandbox) -> crate::error::Result<(Vec<Draft>, usize)> {
    let jobs: Vec<Job> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| Job { id: i, code: s.code(), calls: s.args.iter().map(|a| format!("f({a})")).collect() })
        .collect();
    let results = sb.run(&jobs)?;
    let mut out = Vec::new();
    let mut dropped = 0;
    for (s, r) in specs.into_iter().zip(results) {
        let Some(vals) = r.and_then(|v| v.into_iter().collect::<Option<Vec<String>>>()) else {
            dropped += 1;
            continue;
        };
        let mut meta = serde_json::Map::new();
        meta.insert("kind".into(), json!(s.kind));
        meta.insert("lines".into(), json!(s.body.lines().count() + 1));
        if !write {
            let prompt = format!("{}\nprint(f({}))", s.code(), s.args[0]);
            out.push(Draft {
                task: "code_output",
                family: "code",
                difficulty: s.level,
                prompt,
                completion: vals[0].clone(),
                answer: vals[0].clone(),
                tests: Vec::new(),
                meta,
            });
        } else {
            // A function that gives one value on every input teaches nothing and is dropped.
            if vals.iter().all(|v| *v == vals[0]) {
                dropped += 1;
                continue;
            }
            let prompt = format!(
                "{}\n    \"\"\"{}\n    >>> f({})\n    {}\n    >>> f({})\n    {}\n    \"\"\"",
                s.header, s.doc, s.args[0], vals[0], s.args[1], vals[1]
            );
            let tests = s.args[2..].iter().zip(&vals[2..]).map(|(a, v)| format!("assert f({a}) == {v}")).collect();
            out.push(Draft {
                task: "code_write",
                family: "code",
                difficulty: s.level,
                prompt,
                completion: s.body.clone(),
                answer: s.body.clone(),
                tests,
                meta,
            });
        }
    }
    Ok((out, dropped))
}

/// What the verifier must execute for one code record.
pub fn verification_job(id: usize, task: &str, prompt: &str, completion: &str, tests: &[String]) -> Option<Job> {
    match task {
        "code_output" => {
            let (code, last) = prompt.rsplit_once('\n')?;
            let call = last.strip_prefix("print(")?.strip_suffix(')')?;
            Some(Job { id, code: code.to_string(), calls: vec![call.to_string()] })
        }
        "code_write" => {
            let header = prompt.lines().next()?;
            let calls = tests.iter().map(|t| t.strip_prefix("assert ").unwrap_or(t).to_string()).collect();
            Some(Job { id, code: format!("{header}\n{completion}"), calls })
        }
        _ => None,
    }
}

/// Judge a verification run: the printed value equals the answer, or every hidden test is True.
pub fn judge(task: &str, answer: &str, tests: usize, result: &Option<Vec<Option<String>>>) -> bool {
    match (task, result) {
        ("code_output", Some(v)) => v.len() == 1 && v[0].as_deref() == Some(answer),
        ("code_write", Some(v)) => {
            tests >= HIDDEN_TESTS && v.len() == tests && v.iter().all(|r| r.as_deref() == Some("True"))
        }
        _ => false,
    }
}
