//! An independent checker for worked integer steps.
//!
//! Scratchpads and word-problem solutions write each step as `expr=value`.
//! This module parses such a line from scratch and evaluates it with big
//! integers, sharing no code with the generators, so a generator bug cannot
//! vouch for itself.

use num_bigint::BigInt;
use num_integer::Integer;
use num_traits::Zero;

/// Evaluate an integer expression with `+ - * // %` and parentheses
/// (Python semantics: floor division and a remainder with the divisor's sign).
pub fn eval(expr: &str) -> Option<BigInt> {
    let toks = lex(expr)?;
    let mut p = Parser { toks, pos: 0 };
    let v = p.sum()?;
    (p.pos == p.toks.len()).then_some(v)
}

/// Check a step line `lhs=rhs`: both sides evaluate and are equal.
pub fn check_step(line: &str) -> bool {
    match line.split_once('=') {
        Some((l, r)) => matches!((eval(l), eval(r)), (Some(a), Some(b)) if a == b),
        None => false,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(BigInt),
    Op(&'static str),
    Open,
    Close,
}

fn lex(s: &str) -> Option<Vec<Tok>> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        match b[i] {
            b' ' => i += 1,
            b'0'..=b'9' => {
                let j = i + b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
                out.push(Tok::Num(s[i..j].parse().ok()?));
                i = j;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                out.push(Tok::Op("//"));
                i += 2;
            }
            b'+' => (out.push(Tok::Op("+")), i += 1).1,
            b'-' => (out.push(Tok::Op("-")), i += 1).1,
            b'*' => (out.push(Tok::Op("*")), i += 1).1,
            b'%' => (out.push(Tok::Op("%")), i += 1).1,
            b'(' => (out.push(Tok::Open), i += 1).1,
            b')' => (out.push(Tok::Close), i += 1).1,
            _ => return None,
        }
    }
    Some(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn sum(&mut self) -> Option<BigInt> {
        let mut v = self.product()?;
        while let Some(Tok::Op(op @ ("+" | "-"))) = self.peek().cloned() {
            self.pos += 1;
            let r = self.product()?;
            v = if op == "+" { v + r } else { v - r };
        }
        Some(v)
    }

    fn product(&mut self) -> Option<BigInt> {
        let mut v = self.unary()?;
        while let Some(Tok::Op(op @ ("*" | "//" | "%"))) = self.peek().cloned() {
            self.pos += 1;
            let r = self.unary()?;
            v = match op {
                "*" => v * r,
                _ if r.is_zero() => return None,
                "//" => v.div_floor(&r),
                _ => v.mod_floor(&r),
            };
        }
        Some(v)
    }

    fn unary(&mut self) -> Option<BigInt> {
        match self.peek().cloned()? {
            Tok::Op("-") => {
                self.pos += 1;
                Some(-self.unary()?)
            }
            Tok::Num(n) => {
                self.pos += 1;
                Some(n)
            }
            Tok::Open => {
                self.pos += 1;
                let v = self.sum()?;
                (self.peek() == Some(&Tok::Close)).then(|| self.pos += 1)?;
                Some(v)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn evaluates_python_style_integer_arithmetic() {
        assert_eq!(eval("2+3*4"), Some(14.into()));
        assert_eq!(eval("(2+3)*4"), Some(20.into()));
        assert_eq!(eval("-7//2"), Some((-4).into()));
        assert_eq!(eval("-7%2"), Some(1.into()));
        assert_eq!(eval("99999999999999999999*10"), Some("999999999999999999990".parse().unwrap()));
        assert_eq!(eval("1//0"), None);
        assert_eq!(eval("1+"), None);
        assert_eq!(eval("a+1"), None);
        assert!(check_step("7+8+1=16"));
        assert!(!check_step("7+8+1=15"));
        assert!(!check_step("no equals"));
    }

    proptest! {
        #[test]
        fn agrees_with_machine_integers(a in -1_000_000i64..1_000_000, b in -1000i64..1000, c in 1i64..1000) {
            let e = format!("{a}+{b}*({c}-{b})-{a}//{c}+{a}%{c}");
            let want = a + b * (c - b) - a.div_euclid(c) + a.rem_euclid(c);
            prop_assert_eq!(eval(&e), Some(BigInt::from(want)));
        }
    }
}
