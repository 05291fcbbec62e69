//! Algebra: linear equations `a·x + b = c·x + d` (integer or rational
//! solutions), 2×2 linear systems and quadratics with integer roots, each
//! solved step by step. The verifier parses the equations itself and
//! substitutes the answer with exact rationals.

use std::collections::BTreeMap;

use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{One, Zero};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::record::{extract_answer, Draft};

/// Algebra task names.
pub const TASKS: [&str; 3] = ["linear", "system2", "quadratic"];

type Q = BigRational;

fn q(n: i64) -> Q {
    Q::from_integer(BigInt::from(n))
}

fn fmt_q(x: &Q) -> String {
    if x.is_integer() {
        x.to_integer().to_string()
    } else {
        format!("{}/{}", x.numer(), x.denom())
    }
}

/// Format Σ coef·var + constant, e.g. `3x - y + 5`.
fn fmt_terms(terms: &[(i64, &str)]) -> String {
    let mut s = String::new();
    for &(c, v) in terms {
        if c == 0 {
            continue;
        }
        let mag = c.abs();
        let body = match (mag, v) {
            (1, v) if !v.is_empty() => v.to_string(),
            (m, v) => format!("{m}{v}"),
        };
        if s.is_empty() {
            s = if c < 0 { format!("-{body}") } else { body };
        } else {
            s.push_str(if c < 0 { " - " } else { " + " });
            s.push_str(&body);
        }
    }
    if s.is_empty() {
        "0".into()
    } else {
        s
    }
}

/// Generate one algebra problem of `task` (one of [`TASKS`]).
pub fn generate(task: &'static str, rng: &mut ChaCha8Rng) -> Draft {
    // Levels are drawn 1:2:3:4 because the space of distinct problems grows with the level;
    // uniform levels would spend most level-1 draws on duplicates (e.g. only 1,891 distinct
    // level-1 quadratics exist) and trip the build's duplicate guard.
    let level: u8 = match rng.random_range(0..10) {
        0 => 1,
        1..=2 => 2,
        3..=5 => 3,
        _ => 4,
    };
    let m = [0, 5, 10, 20, 50][level as usize];
    let nz = |rng: &mut ChaCha8Rng| loop {
        let v = rng.random_range(-m..=m);
        if v != 0 {
            break v;
        }
    };
    let mut meta = serde_json::Map::new();
    let (prompt, steps, answer) = match task {
        "linear" => {
            let (a, mut c) = (nz(rng), rng.random_range(-m..=m));
            if c == a {
                c = a + 1;
            }
            let b = rng.random_range(-m..=m);
            let d = if level <= 2 { (a - c) * rng.random_range(-m..=m) + b } else { rng.random_range(-m * m..=m * m) };
            let x = Q::new(BigInt::from(d - b), BigInt::from(a - c));
            let steps = vec![
                format!("{} = {}", fmt_terms(&[(a - c, "x"), (b, "")]), d),
                format!("{} = {}", fmt_terms(&[(a - c, "x")]), d - b),
                format!("x = {}", fmt_q(&x)),
            ];
            meta.insert("integer".into(), json!(x.is_integer()));
            let prompt =
                format!("Solve for x: {} = {}", fmt_terms(&[(a, "x"), (b, "")]), fmt_terms(&[(c, "x"), (d, "")]));
            (prompt, steps, format!("x = {}", fmt_q(&x)))
        }
        "system2" => {
            let (x, y) = (rng.random_range(-m..=m), rng.random_range(-m..=m));
            let (mut a1, b1, a2, b2) = (nz(rng), nz(rng), nz(rng), nz(rng));
            if a1 * b2 - a2 * b1 == 0 {
                a1 += 1;
                if a1 == 0 || a1 * b2 - a2 * b1 == 0 {
                    a1 += 1;
                }
            }
            let (c1, c2) = (a1 * x + b1 * y, a2 * x + b2 * y);
            let e = |a: i64, b: i64, c: i64| format!("{} = {c}", fmt_terms(&[(a, "x"), (b, "y")]));
            let steps = vec![
                e(a1 * a2, b1 * a2, c1 * a2),
                e(a1 * a2, b2 * a1, c2 * a1),
                e(0, b1 * a2 - b2 * a1, c1 * a2 - c2 * a1),
                format!("y = {y}"),
                e(a1, 0, c1 - b1 * y),
                format!("x = {x}"),
            ];
            (format!("Solve: {}, {}", e(a1, b1, c1), e(a2, b2, c2)), steps, format!("x = {x}, y = {y}"))
        }
        _ => {
            // Level 1-2 are monic; level 3-4 add a leading coefficient 2..9 of either sign.
            // Roots reach ±30/±60 at levels 1/3 and ±150 at levels 2/4.
            let k = if level >= 3 { rng.random_range(2..=9) * if rng.random_bool(0.5) { 1 } else { -1 } } else { 1 };
            let rm: i64 = [0, 30, 150, 60, 150][level as usize];
            let (mut r1, mut r2) = (rng.random_range(-rm..=rm), rng.random_range(-rm..=rm));
            if r1 > r2 {
                std::mem::swap(&mut r1, &mut r2);
            }
            let poly = |k: i64| fmt_terms(&[(k, "x^2"), (-k * (r1 + r2), "x"), (k * r1 * r2, "")]);
            let mut steps = Vec::new();
            if k != 1 {
                steps.push(format!("{} = 0", poly(1)));
            }
            let factor = |r: i64| fmt_terms(&[(1, "x"), (-r, "")]);
            steps.push(format!("({})({}) = 0", factor(r1), factor(r2)));
            let ans = if r1 == r2 { format!("x = {r1}") } else { format!("x = {r1} or x = {r2}") };
            (format!("Solve: {} = 0", poly(k)), steps, ans)
        }
    };
    let mut completion = steps.join("\n");
    if extract_answer(&completion) != answer {
        completion.push('\n');
        completion.push_str(&answer);
    }
    Draft { task, family: "algebra", difficulty: level, prompt, completion, answer, tests: Vec::new(), meta }
}

/// Coefficients by monomial (`x^2`, `x`, `y`, `` for the constant).
type Poly = BTreeMap<String, Q>;

/// Parse `3x - y + 5/2` or `x^2 - 5x + 6` into coefficients.
fn parse_poly(s: &str) -> Option<Poly> {
    let s = s.replace(' ', "");
    let mut out = Poly::new();
    let mut i = 0;
    let b = s.as_bytes();
    if b.is_empty() {
        return None;
    }
    while i < b.len() {
        let mut sign = Q::one();
        if b[i] == b'+' || b[i] == b'-' {
            if b[i] == b'-' {
                sign = -sign;
            }
            i += 1;
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'/') {
            i += 1;
        }
        let coef = if start == i {
            Q::one()
        } else {
            let t = &s[start..i];
            match t.split_once('/') {
                Some((n, d)) => {
                    let d: BigInt = d.parse().ok()?;
                    if d.is_zero() {
                        return None;
                    }
                    Q::new(n.parse().ok()?, d)
                }
                None => Q::from_integer(t.parse().ok()?),
            }
        };
        let mono = if i < b.len() && (b[i] == b'x' || b[i] == b'y') {
            let v = char::from(b[i]);
            i += 1;
            if s[i..].starts_with("^2") {
                i += 2;
                format!("{v}^2")
            } else {
                v.to_string()
            }
        } else {
            if start == i {
                return None;
            }
            String::new()
        };
        *out.entry(mono).or_insert_with(Q::zero) += sign * coef;
        if i < b.len() && b[i] != b'+' && b[i] != b'-' {
            return None;
        }
    }
    Some(out)
}

/// Parse `lhs = rhs` into lhs − rhs = 0.
fn parse_eq(s: &str) -> Option<Poly> {
    let (l, r) = s.split_once('=')?;
    let mut p = parse_poly(l)?;
    for (k, v) in parse_poly(r)? {
        *p.entry(k).or_insert_with(Q::zero) -= v;
    }
    Some(p)
}

fn eval(p: &Poly, x: &Q, y: &Q) -> Q {
    p.iter().fold(Q::zero(), |acc, (m, c)| {
        acc + c * match m.as_str() {
            "x^2" => x * x,
            "x" => x.clone(),
            "y" => y.clone(),
            "y^2" => y * y,
            _ => Q::one(),
        }
    })
}

fn coef(p: &Poly, m: &str) -> Q {
    p.get(m).cloned().unwrap_or_else(Q::zero)
}

fn parse_value(s: &str) -> Option<Q> {
    let p = parse_poly(s.trim())?;
    (p.len() == 1).then(|| p.get("").cloned()).flatten()
}

/// Independent check of an algebra record: parse the equations, substitute
/// the answer exactly, check every derived step holds at the answer, and
/// check the answer is the complete solution set.
pub fn verify(task: &str, prompt: &str, completion: &str, answer: &str) -> Result<(), String> {
    if extract_answer(completion) != answer {
        return Err("completion does not end with the answer".into());
    }
    let zero = Q::zero();
    let holds = |eq: &Poly, x: &Q, y: &Q| eval(eq, x, y).is_zero();
    let (x, y, eqs): (Vec<Q>, Q, Vec<Poly>) = match task {
        "linear" => {
            let eq = parse_eq(prompt.strip_prefix("Solve for x: ").ok_or("unexpected prompt")?).ok_or("unparsable")?;
            if coef(&eq, "x").is_zero() || eq.keys().any(|k| k != "x" && !k.is_empty()) {
                return Err("not a linear equation with a unique solution".into());
            }
            let x = parse_value(answer.strip_prefix("x = ").ok_or("bad answer")?).ok_or("bad answer")?;
            (vec![x], zero.clone(), vec![eq])
        }
        "system2" => {
            let body = prompt.strip_prefix("Solve: ").ok_or("unexpected prompt")?;
            let (e1, e2) = body.split_once(", ").ok_or("expected two equations")?;
            let (e1, e2) = (parse_eq(e1).ok_or("unparsable")?, parse_eq(e2).ok_or("unparsable")?);
            let det = coef(&e1, "x") * coef(&e2, "y") - coef(&e2, "x") * coef(&e1, "y");
            if det.is_zero() {
                return Err("system has no unique solution".into());
            }
            let (xs, ys) = answer.split_once(", ").ok_or("bad answer")?;
            let x = parse_value(xs.strip_prefix("x = ").ok_or("bad answer")?).ok_or("bad answer")?;
            let y = parse_value(ys.strip_prefix("y = ").ok_or("bad answer")?).ok_or("bad answer")?;
            (vec![x], y, vec![e1, e2])
        }
        "quadratic" => {
            let eq = parse_eq(prompt.strip_prefix("Solve: ").ok_or("unexpected prompt")?).ok_or("unparsable")?;
            let (a, b, c) = (coef(&eq, "x^2"), coef(&eq, "x"), coef(&eq, ""));
            if a.is_zero() {
                return Err("not a quadratic".into());
            }
            let roots: Vec<Q> = answer
                .split(" or ")
                .map(|r| r.strip_prefix("x = ").and_then(parse_value))
                .collect::<Option<_>>()
                .ok_or("bad answer")?;
            let disc = &b * &b - q(4) * &a * &c;
            match roots.as_slice() {
                [r] if disc.is_zero() && *r == -&b / (q(2) * &a) => {}
                [r1, r2] if r1 < r2 && (r1 + r2) * &a == -&b && r1 * r2 * &a == c => {}
                _ => return Err(format!("{answer} is not the full solution set")),
            }
            (roots, zero.clone(), vec![eq])
        }
        _ => return Err(format!("unknown algebra task {task}")),
    };
    for xv in &x {
        for eq in &eqs {
            if !holds(eq, xv, &y) {
                return Err(format!("answer {answer} does not satisfy the equation"));
            }
        }
    }
    for line in completion.lines() {
        if line.contains(" or ") || line.contains(", ") {
            continue; // the answer line, already checked
        }
        let eq = if line.starts_with('(') {
            // (x - r1)(x - r2) = 0: each factor vanishes at one root.
            let inner = line.trim_end_matches(" = 0");
            let fs: Vec<&str> = inner.trim_start_matches('(').trim_end_matches(')').split(")(").collect();
            let ps: Vec<Poly> = fs.iter().map(|f| parse_poly(f)).collect::<Option<_>>().ok_or("bad factor")?;
            for xv in &x {
                if !ps.iter().any(|p| holds(p, xv, &y)) {
                    return Err(format!("wrong step `{line}`"));
                }
            }
            continue;
        } else {
            parse_eq(line).ok_or_else(|| format!("unparsable step `{line}`"))?
        };
        if !x.iter().all(|xv| holds(&eq, xv, &y)) {
            return Err(format!("wrong step `{line}`"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn every_task_verifies() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for task in TASKS {
            for _ in 0..500 {
                let d = generate(task, &mut rng);
                verify(task, &d.prompt, &d.completion, &d.answer).unwrap_or_else(|e| panic!("{task}: {e}\n{d:?}"));
            }
        }
    }

    #[test]
    fn corrupted_records_are_rejected() {
        let ok = verify("linear", "Solve for x: 3x + 5 = x - 7", "2x + 5 = -7\n2x = -12\nx = -6", "x = -6");
        assert!(ok.is_ok(), "{ok:?}");
        assert!(verify("linear", "Solve for x: 3x + 5 = x - 7", "2x = -12\nx = -5", "x = -5").is_err());
        assert!(verify("linear", "Solve for x: 3x + 5 = x - 7", "2x + 5 = 7\nx = -6", "x = -6").is_err());
        assert!(verify("linear", "Solve for x: 2x = 3", "x = 3/2", "x = 3/2").is_ok());
        assert!(verify("system2", "Solve: x + y = 3, x - y = 1", "x = 2, y = 1", "x = 2, y = 1").is_ok());
        assert!(verify("system2", "Solve: x + y = 3, x - y = 1", "x = 1, y = 2", "x = 1, y = 2").is_err());
        assert!(verify("quadratic", "Solve: x^2 - 5x + 6 = 0", "(x - 2)(x - 3) = 0\nx = 2 or x = 3", "x = 2 or x = 3")
            .is_ok());
        // A correct root but not all of them.
        assert!(verify("quadratic", "Solve: x^2 - 5x + 6 = 0", "x = 2", "x = 2").is_err());
    }
}
