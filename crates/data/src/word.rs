//! GSM8K-style multi-step word problems from templates. Every step is an
//! integer `expr=value` line, so the independent step checker re-derives
//! the whole solution.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::check;
use crate::record::{extract_answer, Draft};

/// Templates used for train and test.
pub const TRAIN_TEMPLATES: [&str; 12] = [
    "change", "boxes", "trip", "savings", "worktime", "bags", "machines", "discount", "ages", "recipe", "garden",
    "pooling",
];
/// Templates that appear only in the `heldout-family` split.
pub const HELDOUT_TEMPLATES: [&str; 4] = ["fuel", "tickets", "pages", "temperature"];

const NAMES: [&str; 12] =
    ["Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jon", "Kemi", "Liam"];
const GOODS: [&str; 6] = ["jacket", "lamp", "bike", "chair", "watch", "backpack"];
const INGREDIENTS: [&str; 4] = ["eggs", "cups of flour", "spoons of sugar", "cups of milk"];
const DISHES: [&str; 4] = ["cake", "pie", "loaf", "tart"];
const ITEMS: [&str; 10] = ["apple", "pencil", "marble", "sticker", "book", "cookie", "card", "shell", "coin", "button"];

/// Generate one word problem from `template`.
pub fn generate(template: &'static str, rng: &mut ChaCha8Rng) -> Draft {
    let level: u8 = rng.random_range(1..=3);
    let m = [0i64, 12, 60, 400][level as usize];
    let mut r = |lo: i64, hi: i64| rng.random_range(lo..=hi.max(lo));
    let n1 = NAMES[r(0, 11) as usize];
    let n2 = NAMES[r(0, 11) as usize];
    let item = ITEMS[r(0, 9) as usize];
    let mut steps: Vec<String> = Vec::new();
    let mut st = |e: String| -> i64 {
        let v = check::eval(&e).and_then(|v| i64::try_from(v).ok()).unwrap_or(0);
        steps.push(format!("{e}={v}"));
        v
    };
    let prompt = match template {
        "change" => {
            let (a, p) = (r(2, m / 2 + 2), r(1, m / 3 + 2));
            let cost = st(format!("{a}*{p}"));
            let bill = (cost / 10 + 1 + r(0, 5)) * 10;
            st(format!("{bill}-{cost}"));
            format!(
                "{n1} buys {a} {item}s at ${p} each and pays with ${bill}. How many dollars of change does {n1} get?"
            )
        }
        "boxes" => {
            let (a, b) = (r(2, m), r(2, m));
            let t = st(format!("{a}*{b}"));
            let c = r(1, t - 1);
            st(format!("{t}-{c}"));
            format!("{n1} has {a} boxes with {b} {item}s in each box and gives away {c} {item}s. How many {item}s does {n1} have left?")
        }
        "trip" => {
            let (s1, h1, s2, h2) = (r(20, 20 + m), r(1, 6), r(20, 20 + m), r(1, 6));
            let a = st(format!("{s1}*{h1}"));
            let b = st(format!("{s2}*{h2}"));
            st(format!("{a}+{b}"));
            format!("A train travels at {s1} km per hour for {h1} hours, then at {s2} km per hour for {h2} hours. How many km does it travel in total?")
        }
        "savings" => {
            let (a, w) = (r(2, m), r(2, 12));
            let t = st(format!("{a}*{w}"));
            let b = r(0, t);
            st(format!("{t}-{b}"));
            format!(
                "{n1} saves ${a} every week for {w} weeks and then spends ${b}. How many dollars does {n1} have left?"
            )
        }
        "worktime" => {
            let (h, mm, d) = (r(1, 9), r(1, 59), r(2, 6 + m / 20));
            let a = st(format!("{h}*60"));
            let b = st(format!("{a}+{mm}"));
            st(format!("{b}*{d}"));
            format!(
                "{n1} works {h} hours and {mm} minutes a day for {d} days. How many minutes does {n1} work in total?"
            )
        }
        "bags" => {
            let per = r(2, 12);
            let all = per * r(2, m) + r(0, per - 1);
            st(format!("{all}//{per}"));
            format!("{n1} packs {all} {item}s into bags of {per}. How many bags can be filled completely?")
        }
        "machines" => {
            let (a, k, h) = (r(2, m), r(2, 9), r(2, 12));
            let x = st(format!("{a}*{k}"));
            st(format!("{x}*{h}"));
            format!("A machine makes {a} {item}s per hour. How many {item}s do {k} machines make in {h} hours?")
        }
        "discount" => {
            // Multiples of 5% on prices in steps of $20 keep every sale price a whole dollar.
            let d = r(1, 15) * 5;
            let p = r(1, m + 4) * 20;
            let what = GOODS[r(0, GOODS.len() as i64 - 1) as usize];
            let x = st(format!("{p}*{d}"));
            let off = st(format!("{x}//100"));
            st(format!("{p}-{off}"));
            format!(
                "{n1} wants a {what} that costs ${p}. It is on sale for {d}% off. What is the sale price in dollars?"
            )
        }
        "ages" => {
            let (a, k, y) = (r(2, 15), r(2, 5), r(1, 20));
            let b = st(format!("{a}*{k}"));
            st(format!("{b}+{y}"));
            format!("{n1} is {a} years old. {n2} is {k} times as old as {n1}. How old will {n2} be in {y} years?")
        }
        "recipe" => {
            let (e, c, k) = (r(1, 6 + m / 10), r(1, 4 + m / 20), r(2, m / 4 + 4));
            let (ing, dish) = (INGREDIENTS[r(0, 3) as usize], DISHES[r(0, 3) as usize]);
            let cakes = c * k;
            let batches = st(format!("{cakes}//{c}"));
            st(format!("{batches}*{e}"));
            format!("{n1} uses {e} {ing} for {c} {dish}s. How many {ing} does {n1} need for {cakes} {dish}s?")
        }
        "garden" => {
            let (rows, cols) = (r(2, m / 2 + 2), r(2, m / 2 + 2));
            let t = st(format!("{rows}*{cols}"));
            let dead = r(0, t);
            let a = st(format!("{t}-{dead}"));
            let new = r(0, m);
            st(format!("{a}+{new}"));
            format!("A garden has {rows} rows of {cols} plants. {dead} plants die and {new} new plants are added. How many plants are in the garden now?")
        }
        "pooling" => {
            let (a, b) = (r(1, m * 2), r(1, m * 2));
            let c = st(format!("{a}+{b}"));
            st(format!("{a}+{c}"));
            format!("{n1} has ${a}. {n2} has ${b} more than {n1}. How many dollars do they have together?")
        }
        "fuel" => {
            let (l, d) = (r(3, 12), r(1, m / 4 + 2) * 100);
            let h = st(format!("{d}//100"));
            st(format!("{h}*{l}"));
            format!("A car uses {l} liters of fuel per 100 km. How many liters does it use to drive {d} km?")
        }
        "tickets" => {
            let (a, c, x, y) = (r(5, 5 + m), r(2, 2 + m / 2), r(1, 6), r(1, 6));
            let p = st(format!("{a}*{x}"));
            let q = st(format!("{c}*{y}"));
            st(format!("{p}+{q}"));
            format!("Adult tickets cost ${a} and child tickets cost ${c}. A family buys {x} adult tickets and {y} child tickets. How many dollars do they pay?")
        }
        "pages" => {
            let (rd, d) = (r(5, 5 + m / 2), r(2, 9));
            let read = st(format!("{rd}*{d}"));
            let pages = read + r(0, m * 3);
            st(format!("{pages}-{read}"));
            format!("A book has {pages} pages. {n1} reads {rd} pages a day. How many pages are left after {d} days?")
        }
        _ => {
            let (t, d, h) = (r(-10, 30), r(1, 4 + m / 20), r(1, 9));
            let drop = st(format!("{d}*{h}"));
            st(format!("{t}-{drop}"));
            format!("The temperature is {t} degrees and drops {d} degrees every hour for {h} hours. What is the temperature then?")
        }
    };
    let answer = steps.last().and_then(|s| s.rsplit('=').next()).unwrap_or("0").to_string();
    let mut meta = serde_json::Map::new();
    meta.insert("template".into(), json!(template));
    let completion = format!("{}\n{answer}", steps.join("\n"));
    Draft { task: "word", family: "word", difficulty: level, prompt, completion, answer, tests: Vec::new(), meta }
}

/// Independent check: every step line evaluates correctly, each step's
/// inputs come from the prompt or earlier steps, and the answer is the last
/// step's value.
pub fn verify(prompt: &str, completion: &str, answer: &str) -> Result<(), String> {
    if extract_answer(completion) != answer {
        return Err("completion does not end with the answer".into());
    }
    let lines: Vec<&str> = completion.lines().collect();
    let (steps, _) = lines.split_at(lines.len().saturating_sub(1));
    if steps.is_empty() {
        return Err("no worked steps".into());
    }
    let mut known: Vec<String> = number_tokens(prompt);
    for s in steps {
        if !check::check_step(s) {
            return Err(format!("wrong step `{s}`"));
        }
        let (lhs, rhs) = s.split_once('=').unwrap_or((s, ""));
        for n in number_tokens(lhs) {
            if !known.contains(&n) && !["60", "100"].contains(&n.as_str()) {
                return Err(format!("step `{s}` uses {n}, which appears nowhere before it"));
            }
        }
        known.push(rhs.trim().trim_start_matches('-').to_string());
    }
    let last = steps[steps.len() - 1].rsplit('=').next().unwrap_or("");
    if last.trim() != answer {
        return Err(format!("answer {answer} is not the last step's value {last}"));
    }
    Ok(())
}

fn number_tokens(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_ascii_digit()).filter(|t| !t.is_empty()).map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn every_template_verifies() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for t in TRAIN_TEMPLATES.iter().chain(&HELDOUT_TEMPLATES) {
            for _ in 0..300 {
                let d = generate(t, &mut rng);
                verify(&d.prompt, &d.completion, &d.answer).unwrap_or_else(|e| panic!("{t}: {e}\n{d:?}"));
            }
        }
    }

    #[test]
    fn corrupted_records_are_rejected() {
        let p =
            "Ava has 3 boxes with 4 apples in each box and gives away 5 apples. How many apples does Ava have left?";
        assert!(verify(p, "3*4=12\n12-5=7\n7", "7").is_ok());
        assert!(verify(p, "3*4=12\n12-5=8\n8", "8").unwrap_err().contains("wrong step"));
        assert!(verify(p, "3*9=27\n27-5=22\n22", "22").unwrap_err().contains("appears nowhere"));
        assert!(verify(p, "3*4=12\n12-5=7\n12", "12").is_err());
    }
}
