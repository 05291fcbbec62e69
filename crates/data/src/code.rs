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
/// First prompt line of an output-prediction record that asks for an execution trace
/// (one line per loop iteration) before the printed value; only in data built with `--trace`.
pub const TRACE_TAG: &str = "# trace";
/// Most loop iterations a trace shows; a longer run is written in the answer-only form.
pub const MAX_TRACE: usize = 16;
/// Most characters a trace may take, so that traced records fit a training window.
const MAX_TRACE_CHARS: usize = 480;

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

/// An instrumented copy of a generated function's source, `_g`, that returns one line
/// (`VAR=repr ACC=repr`) per iteration of its loop, and `_e(arg, i)`, line `i` or `None`.
/// `None` when the source is not of the generator's shape (one loop at the top level).
fn instrument(code: &str) -> Option<String> {
    let lines: Vec<&str> = code.lines().collect();
    let param = lines.first()?.strip_prefix("def f(")?.strip_suffix("):")?;
    let acc = lines.get(1)?.strip_prefix("    ")?.split_once(" = ")?.0;
    let at = lines.iter().position(|l| l.starts_with("    for ") || l.starts_with("    while "))?;
    let body_end = at + lines[at + 1..].iter().take_while(|l| l.starts_with("        ")).count();
    let var = match lines[at].strip_prefix("    for ") {
        Some(rest) => rest.split_once(" in ")?.0,
        None => lines.get(at + 1)?.trim_start().split_once(" = ")?.0,
    };
    let plain = |n: &str| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if body_end == at || !plain(acc) || !plain(var) {
        return None;
    }
    let mut out = vec![format!("def _g({param}):"), "    _t = []".to_string()];
    out.extend(lines[1..=body_end].iter().map(|l| l.to_string()));
    out.push(format!("        _t.append(f\"{var}={{{var}!r}} {acc}={{{acc}!r}}\")"));
    out.push("    return _t".into());
    out.push("def _e(a, i):".into());
    out.push("    t = _g(a)".into());
    out.push("    return t[i] if i < len(t) else None".into());
    Some(out.join("\n"))
}

/// Extend `job` (which runs `plain`, the untagged source) so that it also returns the trace of
/// `f(arg)`: the instrumented copy, and one call more than [`MAX_TRACE`] reading its lines back,
/// so that a longer run is noticed. `None` when `plain` cannot be instrumented.
fn with_trace(mut job: Job, plain: &str, arg: &str) -> Option<Job> {
    job.code = format!("{}\n{}", job.code, instrument(plain)?);
    job.calls.extend((0..=MAX_TRACE).map(|i| format!("_e({arg}, {i})")));
    Some(job)
}

/// The trace lines of a traced run (the results of [`trace_calls`]), or `None` when a call
/// failed, the loop ran more than [`MAX_TRACE`] times, or a line would need escapes.
fn decode_trace(results: &[Option<String>]) -> Option<Vec<String>> {
    let mut lines = Vec::new();
    for r in results {
        let r = r.as_deref()?;
        if r == "None" {
            return Some(lines);
        }
        // The harness returns each line's `repr`; generated values never hold quotes of both
        // kinds or backslashes, so the line is the repr without its quotes, or is refused.
        let q = r.chars().next()?;
        let inner = r.strip_prefix(q)?.strip_suffix(q)?;
        if lines.len() == MAX_TRACE || !matches!(q, '\'' | '"') || inner.contains(q) || inner.contains('\\') {
            return None;
        }
        lines.push(inner.to_string());
    }
    None
}

/// Whether a traced-data build writes this spec's output record with a trace: half of them,
/// chosen by a hash of the program so that the draws of every other record stay the same.
fn wants_trace(s: &Spec) -> bool {
    blake3::hash(format!("{}\n{}", s.code(), s.args[0]).as_bytes()).as_bytes()[0] & 1 == 1
}

/// Run every spec in the sandbox and turn the successful ones into drafts:
/// `code_output` (predict `f(arg)`) when `write` is false, else `code_write`.
/// With `trace`, half of the `code_output` records ask for an execution trace ([`TRACE_TAG`])
/// and their completion lists it, one line per loop iteration, before the value.
/// Specs whose calls fail, time out or all return the same value are dropped.
pub fn realize(specs: Vec<Spec>, write: bool, trace: bool, sb: &Sandbox) -> crate::error::Result<(Vec<Draft>, usize)> {
    let jobs: Vec<Job> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let job = Job { id: i, code: s.code(), calls: s.args.iter().map(|a| format!("f({a})")).collect() };
            if !write && trace && wants_trace(s) {
                with_trace(job.clone(), &job.code, &s.args[0]).unwrap_or(job)
            } else {
                job
            }
        })
        .collect();
    let results = sb.run(&jobs)?;
    let mut out = Vec::new();
    let mut dropped = 0;
    for (s, r) in specs.into_iter().zip(results) {
        let n = s.args.len();
        let Some(mut vals) = r else {
            dropped += 1;
            continue;
        };
        let steps = if vals.len() > n { decode_trace(&vals.split_off(n)) } else { None };
        let steps = steps.filter(|l| l.iter().map(|x| x.len() + 1).sum::<usize>() <= MAX_TRACE_CHARS);
        let Some(vals) = vals.into_iter().collect::<Option<Vec<String>>>() else {
            dropped += 1;
            continue;
        };
        let mut meta = serde_json::Map::new();
        meta.insert("kind".into(), json!(s.kind));
        meta.insert("lines".into(), json!(s.body.lines().count() + 1));
        if !write {
            let (prompt, completion) = match &steps {
                Some(lines) => {
                    meta.insert("form".into(), json!("trace"));
                    let mut c = lines.join("\n");
                    if !c.is_empty() {
                        c.push('\n');
                    }
                    c.push_str(&vals[0]);
                    (format!("{TRACE_TAG}\n{}\nprint(f({}))", s.code(), s.args[0]), c)
                }
                None => {
                    if trace {
                        meta.insert("form".into(), json!("answer"));
                    }
                    (format!("{}\nprint(f({}))", s.code(), s.args[0]), vals[0].clone())
                }
            };
            out.push(Draft {
                task: "code_output",
                family: "code",
                difficulty: s.level,
                prompt,
                completion,
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
            let job = Job { id, code: code.to_string(), calls: vec![call.to_string()] };
            match code.strip_prefix(TRACE_TAG).and_then(|c| c.strip_prefix('\n')) {
                Some(plain) => with_trace(job, plain, call.strip_prefix("f(")?.strip_suffix(')')?),
                None => Some(job),
            }
        }
        "code_write" => {
            let header = prompt.lines().next()?;
            let calls = tests.iter().map(|t| t.strip_prefix("assert ").unwrap_or(t).to_string()).collect();
            Some(Job { id, code: format!("{header}\n{completion}"), calls })
        }
        _ => None,
    }
}

/// Judge a verification run: the printed value equals the answer (and, for a traced record,
/// the lines of `completion` before its last equal the trace CPython recorded), or every
/// hidden test is True.
pub fn judge(task: &str, answer: &str, completion: &str, tests: usize, result: &Option<Vec<Option<String>>>) -> bool {
    match (task, result) {
        ("code_output", Some(v)) => {
            let Some((value, rest)) = v.split_first() else { return false };
            if value.as_deref() != Some(answer) {
                return false;
            }
            if rest.is_empty() {
                return true;
            }
            let written: Vec<&str> =
                completion.trim_end().rsplit_once('\n').map_or(Vec::new(), |(t, _)| t.lines().collect());
            decode_trace(rest).is_some_and(|lines| lines == written)
        }
        ("code_write", Some(v)) => {
            tests >= HIDDEN_TESTS && v.len() == tests && v.iter().all(|r| r.as_deref() == Some("True"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reprs(xs: &[&str]) -> Vec<Option<String>> {
        xs.iter().map(|x| Some(x.to_string())).collect()
    }

    #[test]
    fn a_trace_ends_at_the_first_none_and_refuses_what_it_cannot_read() {
        let ok = reprs(&["'x=1 acc=1'", "\"ch='a' out='A'\"", "None", "None"]);
        assert_eq!(decode_trace(&ok), Some(vec!["x=1 acc=1".to_string(), "ch='a' out='A'".to_string()]));
        assert_eq!(decode_trace(&reprs(&["None"])), Some(vec![]));
        // A failed call, escapes, a bare value and a loop longer than MAX_TRACE are all refused.
        assert_eq!(decode_trace(&[Some("'x=1'".into()), None]), None);
        assert_eq!(decode_trace(&reprs(&["'x=\\n'", "None"])), None);
        assert_eq!(decode_trace(&reprs(&["12", "None"])), None);
        let long: Vec<Option<String>> = (0..=MAX_TRACE).map(|i| Some(format!("'x={i}'"))).collect();
        assert_eq!(decode_trace(&long), None);
        assert_eq!(
            decode_trace(&long[..MAX_TRACE].iter().cloned().chain([Some("None".into())]).collect::<Vec<_>>())
                .map(|l| l.len()),
            Some(MAX_TRACE)
        );
    }

    #[test]
    fn instrumenting_keeps_the_loop_and_records_its_variables() {
        let code = "def f(n):\n    total = 0\n    while n > 0:\n        d = n % 10\n        total = total + (d)\n        n = n // 10\n    return total";
        let t = instrument(code).unwrap();
        assert!(t.starts_with("def _g(n):\n    _t = []\n    total = 0\n    while n > 0:"), "{t}");
        assert!(
            t.contains("        n = n // 10\n        _t.append(f\"d={d!r} total={total!r}\")\n    return _t"),
            "{t}"
        );
        assert!(instrument("def f(xs):\n    return 1").is_none(), "no loop, no trace");
        assert!(instrument("print(1)").is_none());
    }
}
