//! Arithmetic: +, −, ×, ÷ (quotient and remainder) and chains, with
//! balanced operand and carry-chain lengths, as a column scratchpad or
//! answer-only, optionally with digits least significant first.

use num_bigint::BigInt;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::check;
use crate::record::{extract_answer, Draft};

/// Arithmetic task names.
pub const TASKS: [&str; 5] = ["add", "sub", "mul", "div", "chain"];

/// Options shared by the arithmetic generators.
#[derive(Debug, Clone, Copy)]
pub struct ArithOptions {
    /// Shortest operand, in digits.
    pub min_len: usize,
    /// Longest operand, in digits.
    pub max_len: usize,
    /// Write numbers least significant digit first.
    pub reversed: bool,
}

/// Curriculum level from the longest operand: 1–4 digits is 1, 5–8 is 2, … up to 5.
pub fn difficulty(len: usize) -> u8 {
    len.div_ceil(4).clamp(1, 5) as u8
}

fn digits_to_string(d: &[u8]) -> String {
    // d is least significant first; strip leading zeros of the number.
    let s: String = d.iter().rev().map(|x| char::from(b'0' + x)).collect();
    let t = s.trim_start_matches('0');
    if t.is_empty() {
        "0".into()
    } else {
        t.into()
    }
}

fn random_number(rng: &mut ChaCha8Rng, len: usize) -> Vec<u8> {
    let mut d: Vec<u8> = (0..len).map(|_| rng.random_range(0..10)).collect();
    if len > 1 {
        d[len - 1] = rng.random_range(1..10);
    }
    d
}

/// Longest run of consecutive columns that carry, adding a and b (digits LSB first).
pub fn carry_chain(a: &[u8], b: &[u8]) -> usize {
    let (mut carry, mut run, mut best) = (0, 0, 0);
    for i in 0..a.len().max(b.len()) {
        let s = a.get(i).copied().unwrap_or(0) + b.get(i).copied().unwrap_or(0) + carry;
        carry = u8::from(s >= 10);
        run = if carry == 1 { run + 1 } else { 0 };
        best = best.max(run);
    }
    best
}

/// Operand lengths and a carry-chain target for one addition. Half the draws pick both
/// lengths uniformly (balanced lengths); the other half pick the chain length first, uniformly
/// over 0..=max_len, and then lengths that can hold it. Lengths alone would make long chains
/// rare, since a chain of c needs both operands to have at least c digits.
fn add_plan(rng: &mut ChaCha8Rng, o: &ArithOptions) -> (usize, usize, usize) {
    if rng.random_bool(0.5) {
        let (la, lb) = (rng.random_range(o.min_len..=o.max_len), rng.random_range(o.min_len..=o.max_len));
        (la, lb, rng.random_range(0..=la.min(lb)))
    } else {
        let target = rng.random_range(0..=o.max_len);
        let lo = target.max(o.min_len).max(1);
        (rng.random_range(lo..=o.max_len), rng.random_range(lo..=o.max_len), target)
    }
}

/// Two addends whose longest carry chain is steered to `target` columns (at most the shorter length).
fn addends(rng: &mut ChaCha8Rng, la: usize, lb: usize, target: usize) -> (Vec<u8>, Vec<u8>) {
    let mut a = random_number(rng, la);
    let mut b = random_number(rng, lb);
    let overlap = la.min(lb);
    let target = target.min(overlap);
    let start = if target == 0 { 0 } else { rng.random_range(0..=overlap - target) };
    for i in 0..overlap {
        let top = |i: usize, len: usize| i + 1 == len && len > 1;
        let (lo_a, lo_b) = (u8::from(top(i, la)), u8::from(top(i, lb)));
        let in_chain = target > 0 && i >= start && i < start + target;
        let sum_ok = |s: u8| {
            if in_chain && i == start {
                s >= 10
            } else if in_chain {
                s == 9
            } else {
                s <= 8
            }
        };
        // Resample the column until it has the wanted kind (bounded; kept as is if unlucky).
        for _ in 0..32 {
            if sum_ok(a[i] + b[i]) {
                break;
            }
            a[i] = rng.random_range(lo_a..10);
            b[i] = rng.random_range(lo_b..10);
        }
    }
    (a, b)
}

fn num(s: &str, reversed: bool) -> String {
    if reversed {
        match s.strip_prefix('-') {
            Some(rest) => format!("-{}", rest.chars().rev().collect::<String>()),
            None => s.chars().rev().collect(),
        }
    } else {
        s.to_string()
    }
}

/// Generate one arithmetic problem of `task` (one of [`TASKS`]).
pub fn generate(task: &'static str, rng: &mut ChaCha8Rng, o: &ArithOptions) -> Draft {
    let len = |rng: &mut ChaCha8Rng| rng.random_range(o.min_len..=o.max_len);
    let scratch = rng.random_bool(0.5);
    let mut meta = serde_json::Map::new();
    let (lhs, steps, answer, maxlen) = match task {
        "add" => {
            let (la, lb, target) = add_plan(rng, o);
            let (a, b) = addends(rng, la, lb, target);
            meta.insert("carry_chain".into(), json!(carry_chain(&a, &b)));
            meta.insert("lens".into(), json!([la, lb]));
            let (sa, sb) = (digits_to_string(&a), digits_to_string(&b));
            let mut steps = Vec::new();
            let mut carry = 0;
            for i in 0..la.max(lb) {
                let (x, y) = (a.get(i).copied().unwrap_or(0), b.get(i).copied().unwrap_or(0));
                let s = x + y + carry;
                steps.push(format!("{x}+{y}+{carry}={s}"));
                carry = s / 10;
            }
            let ans = (sa.parse::<BigInt>().unwrap_or_default() + sb.parse::<BigInt>().unwrap_or_default()).to_string();
            (format!("{}+{}", num(&sa, o.reversed), num(&sb, o.reversed)), steps, ans, la.max(lb))
        }
        "sub" => {
            let (la, lb) = (len(rng), len(rng));
            let (mut a, mut b) = (random_number(rng, la), random_number(rng, lb));
            let (sa0, sb0) = (digits_to_string(&a), digits_to_string(&b));
            if sa0.parse::<BigInt>().unwrap_or_default() < sb0.parse::<BigInt>().unwrap_or_default() {
                std::mem::swap(&mut a, &mut b);
            }
            meta.insert("lens".into(), json!([a.len(), b.len()]));
            let (sa, sb) = (digits_to_string(&a), digits_to_string(&b));
            let mut steps = Vec::new();
            let mut borrow = 0i32;
            for (i, ai) in a.iter().enumerate() {
                let (x, y) = (i32::from(*ai), i32::from(b.get(i).copied().unwrap_or(0)));
                let d = x - y - borrow;
                if d < 0 {
                    steps.push(format!("{x}+10-{y}-{borrow}={}", d + 10));
                    borrow = 1;
                } else {
                    steps.push(format!("{x}-{y}-{borrow}={d}"));
                    borrow = 0;
                }
            }
            let ans = (sa.parse::<BigInt>().unwrap_or_default() - sb.parse::<BigInt>().unwrap_or_default()).to_string();
            (format!("{}-{}", num(&sa, o.reversed), num(&sb, o.reversed)), steps, ans, la.max(lb))
        }
        "mul" => {
            let (la, lb) = (len(rng), rng.random_range(o.min_len..=o.max_len.min(8).max(o.min_len)));
            let (a, b) = (random_number(rng, la), random_number(rng, lb));
            meta.insert("lens".into(), json!([la, lb]));
            let (sa, sb) = (digits_to_string(&a), digits_to_string(&b));
            let av: BigInt = sa.parse().unwrap_or_default();
            let mut steps = Vec::new();
            let mut total = BigInt::from(0);
            for (i, d) in b.iter().enumerate() {
                let shift = "0".repeat(i);
                let p = &av * BigInt::from(*d) * BigInt::from(10u32).pow(i as u32);
                steps.push(format!("{sa}*{d}{shift}={p}"));
                if i > 0 {
                    steps.push(format!("{total}+{p}={}", &total + &p));
                }
                total += p;
            }
            let ans = (av * sb.parse::<BigInt>().unwrap_or_default()).to_string();
            (format!("{}*{}", num(&sa, o.reversed), num(&sb, o.reversed)), steps, ans, la.max(lb))
        }
        "div" => {
            let la = len(rng);
            let lb = rng.random_range(1..=la.min(6));
            let a = random_number(rng, la);
            let mut b = random_number(rng, lb);
            if b.iter().all(|d| *d == 0) {
                b[0] = rng.random_range(1..10);
            }
            meta.insert("lens".into(), json!([la, lb]));
            let (sa, sb) = (digits_to_string(&a), digits_to_string(&b));
            let bv: BigInt = sb.parse().unwrap_or_default();
            let mut steps = Vec::new();
            let mut cur = BigInt::from(0);
            let mut started = false;
            for ch in sa.chars() {
                cur = cur * 10 + BigInt::from(ch.to_digit(10).unwrap_or(0));
                let q = &cur / &bv;
                if q > BigInt::from(0) || started {
                    started = true;
                    let r = &cur - &q * &bv;
                    steps.push(format!("{cur}//{sb}={q}"));
                    steps.push(format!("{cur}-{q}*{sb}={r}"));
                    cur = r;
                }
            }
            let av: BigInt = sa.parse().unwrap_or_default();
            if !started {
                steps.push(format!("{sa}//{sb}=0"));
                steps.push(format!("{sa}-0*{sb}={sa}"));
            }
            let ans = format!(
                "{} r {}",
                num(&(&av / &bv).to_string(), o.reversed),
                num(&(&av % &bv).to_string(), o.reversed)
            );
            (format!("{}/{}", num(&sa, o.reversed), num(&sb, o.reversed)), steps, ans, la)
        }
        _ => {
            let n = rng.random_range(3..=5);
            let mut terms = Vec::new();
            let mut expr = String::new();
            let mut steps = Vec::new();
            let mut acc = BigInt::from(0);
            let mut maxlen = 0;
            for i in 0..n {
                let l = rng.random_range(o.min_len..=o.max_len.min(8).max(o.min_len));
                maxlen = maxlen.max(l);
                let s = digits_to_string(&random_number(rng, l));
                let v: BigInt = s.parse().unwrap_or_default();
                if i == 0 {
                    expr.push_str(&num(&s, o.reversed));
                    acc = v;
                } else {
                    let plus = rng.random_bool(0.5);
                    let op = if plus { '+' } else { '-' };
                    expr.push(op);
                    expr.push_str(&num(&s, o.reversed));
                    let next = if plus { &acc + &v } else { &acc - &v };
                    // A negative running total is written in parentheses so the step parses.
                    let shown = if acc < BigInt::from(0) { format!("({acc})") } else { acc.to_string() };
                    steps.push(format!("{shown}{op}{s}={next}"));
                    acc = next;
                }
                terms.push(s);
            }
            meta.insert("terms".into(), json!(n));
            (expr, steps, acc.to_string(), maxlen)
        }
    };
    meta.insert("form".into(), json!(if scratch { "scratchpad" } else { "answer" }));
    let answer = if task == "div" { answer } else { num(&answer, o.reversed) };
    let prefix = format!("{}{}", if o.reversed { "rev " } else { "" }, if scratch { "work: " } else { "" });
    let completion = if scratch { format!("{}\n{answer}", steps.join("\n")) } else { answer.clone() };
    Draft {
        task,
        family: "arithmetic",
        difficulty: difficulty(maxlen),
        prompt: format!("{prefix}{lhs}="),
        completion,
        answer,
        tests: Vec::new(),
        meta,
    }
}

fn unreverse(s: &str) -> String {
    // Reverse every maximal digit run in place.
    let mut out = String::new();
    let mut run = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            run.push(c);
        } else {
            out.extend(run.chars().rev());
            run.clear();
            out.push(c);
        }
    }
    out.extend(run.chars().rev());
    out
}

/// Independent check of an arithmetic record: re-derive the answer from the
/// prompt with big integers, check every scratchpad step, and check that
/// the completion ends with the answer.
pub fn verify(prompt: &str, completion: &str, answer: &str) -> Result<(), String> {
    let mut p = prompt;
    let reversed = p.starts_with("rev ");
    p = p.trim_start_matches("rev ");
    let scratch = p.starts_with("work: ");
    p = p.trim_start_matches("work: ");
    let expr = p.strip_suffix('=').ok_or("prompt does not end with '='")?;
    let expr = if reversed { unreverse(expr) } else { expr.to_string() };
    let ans = if reversed { unreverse(answer) } else { answer.to_string() };
    let want = if let Some((a, b)) = expr.split_once('/') {
        let q = check::eval(&format!("{a}//{b}")).ok_or("bad division")?;
        let r = check::eval(&format!("{a}%{b}")).ok_or("bad division")?;
        format!("{q} r {r}")
    } else {
        check::eval(&expr).ok_or("prompt is not an integer expression")?.to_string()
    };
    if ans != want {
        return Err(format!("answer {ans} but {expr} is {want}"));
    }
    if extract_answer(completion) != answer {
        return Err("completion does not end with the answer".into());
    }
    if scratch {
        let lines: Vec<&str> = completion.lines().collect();
        for l in &lines[..lines.len().saturating_sub(1)] {
            if !check::check_step(l) {
                return Err(format!("wrong step `{l}`"));
            }
        }
    } else if completion != answer {
        return Err("answer-only completion holds more than the answer".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn every_task_verifies_in_both_digit_orders() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for reversed in [false, true] {
            let o = ArithOptions { min_len: 1, max_len: 20, reversed };
            for task in TASKS {
                for _ in 0..300 {
                    let d = generate(task, &mut rng, &o);
                    verify(&d.prompt, &d.completion, &d.answer).unwrap_or_else(|e| panic!("{task}: {e}\n{d:?}"));
                }
            }
        }
    }

    #[test]
    fn corrupted_records_are_rejected() {
        assert!(verify("12+30=", "42", "42").is_ok());
        assert!(verify("12+30=", "43", "43").unwrap_err().contains("answer 43"));
        assert!(verify("work: 12+30=", "2+0+0=2\n1+3+0=5\n42", "42").unwrap_err().contains("wrong step"));
        assert!(verify("17/5=", "3 r 2", "3 r 2").is_ok());
        assert!(verify("17/5=", "3 r 1", "3 r 1").is_err());
        assert!(verify("rev 21+03=", "24", "24").is_ok());
        assert!(verify("12+30=", "42\n42", "42").is_err());
    }

    #[test]
    fn carry_chains_cover_every_length() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut seen = [0usize; 11];
        for _ in 0..5000 {
            let t = rng.random_range(0..=10);
            let (a, b) = addends(&mut rng, 10, 10, t);
            seen[carry_chain(&a, &b).min(10)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 100), "{seen:?}");
    }

    #[test]
    fn addition_balances_chains_and_lengths() {
        let o = ArithOptions { min_len: 1, max_len: 10, reversed: false };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (mut chains, mut lens) = ([0usize; 11], [0usize; 11]);
        let n = 6000;
        for _ in 0..n {
            let d = generate("add", &mut rng, &o);
            chains[d.meta["carry_chain"].as_u64().unwrap_or(99).min(10) as usize] += 1;
            for l in d.meta["lens"].as_array().into_iter().flatten() {
                lens[l.as_u64().unwrap_or(0).min(10) as usize] += 1;
            }
        }
        // Uniform would be 1/11 of draws per chain length and 1/10 per operand length.
        assert!(chains.iter().all(|&c| c * 40 > n), "carry chains {chains:?}");
        assert!(lens[1..].iter().all(|&c| c * 30 > 2 * n), "operand lengths {lens:?}");
    }
}
