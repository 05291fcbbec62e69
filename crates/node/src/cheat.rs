//! How a lying server lies: the test flag behind `odin node --cheat` and `odin swarm --cheat`.
//!
//! A cheat runs the step honestly (or not at all), then changes what it sends and signs a
//! claim that matches what it sent, as a real liar would: a claim that disagreed with the
//! bytes next to it would give itself away without any recomputation. Only an audit that
//! recomputes the step can tell, which is what the verification tests and benchmarks measure.

use std::fmt;
use std::str::FromStr;

/// A way of lying about a step's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cheat {
    /// Flip the lowest mantissa bit of one output value on every step.
    FlipBit,
    /// Add noise of about 1% of each value's size to every output value.
    Noise,
    /// Send the session's previous output again instead of computing (where the shapes match).
    Stale,
    /// Send the latest output of another session of this server (where the shapes match).
    OtherSession,
    /// Do not run the blocks at all: pass hidden states through unchanged and leave the state
    /// as it was (on token input, run the blocks without advancing the state).
    SkipBlocks,
    /// Run other weights of the same shape (a cheaper or a poisoned model) under the real id.
    OtherModel,
    /// Flip a bit like [`Cheat::FlipBit`] on one step in `n`, chosen at random.
    OneIn(u32),
}

impl Cheat {
    /// Every kind of cheat the benchmarks and tests run, one step in 100 for the rare one.
    pub const ALL: [Cheat; 7] = [
        Cheat::FlipBit,
        Cheat::Noise,
        Cheat::Stale,
        Cheat::OtherSession,
        Cheat::SkipBlocks,
        Cheat::OtherModel,
        Cheat::OneIn(100),
    ];

    /// Whether this step is one the cheat lies on (`draw` is uniform in 0..1).
    pub fn lies_now(self, draw: f64) -> bool {
        match self {
            Cheat::OneIn(n) => draw * f64::from(n.max(1)) < 1.0,
            _ => true,
        }
    }
}

/// Flip the lowest mantissa bit of the value at `at` (wrapped to the slice).
pub(crate) fn flip_bit(values: &mut [f32], at: usize) {
    if values.is_empty() {
        return;
    }
    let i = at % values.len();
    values[i] = f32::from_bits(values[i].to_bits() ^ 1);
}

/// Add noise of about 1% of each value's magnitude (deterministic in `seed`).
pub(crate) fn add_noise(values: &mut [f32], seed: u64) {
    let mut x = seed | 1;
    for v in values.iter_mut() {
        // xorshift64: the noise need not be good, only present everywhere.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let u = (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        *v += u * 0.02 * v.abs().max(1e-3);
    }
}

impl fmt::Display for Cheat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cheat::FlipBit => f.write_str("flip-bit"),
            Cheat::Noise => f.write_str("noise"),
            Cheat::Stale => f.write_str("stale"),
            Cheat::OtherSession => f.write_str("other-session"),
            Cheat::SkipBlocks => f.write_str("skip-blocks"),
            Cheat::OtherModel => f.write_str("other-model"),
            Cheat::OneIn(n) => write!(f, "one-in-{n}"),
        }
    }
}

impl FromStr for Cheat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "flip-bit" => Cheat::FlipBit,
            "noise" => Cheat::Noise,
            "stale" => Cheat::Stale,
            "other-session" => Cheat::OtherSession,
            "skip-blocks" => Cheat::SkipBlocks,
            "other-model" => Cheat::OtherModel,
            _ => match s.strip_prefix("one-in-").map(str::parse::<u32>) {
                Some(Ok(n)) if n >= 1 => Cheat::OneIn(n),
                _ => {
                    return Err(format!(
                        "unknown cheat `{s}`: use flip-bit, noise, stale, other-session, skip-blocks, \
                         other-model or one-in-N (N >= 1)"
                    ))
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cheat_reads_back_from_its_name() {
        for c in Cheat::ALL {
            assert_eq!(c.to_string().parse::<Cheat>(), Ok(c));
        }
        assert!("one-in-0".parse::<Cheat>().is_err());
        assert!("lie".parse::<Cheat>().unwrap_err().contains("flip-bit"));
    }

    #[test]
    fn a_flipped_bit_and_noise_change_the_values() {
        let mut v = vec![1.0f32, -2.0, 0.0];
        let orig = v.clone();
        flip_bit(&mut v, 4);
        assert_ne!(v[1].to_bits(), orig[1].to_bits());
        assert_eq!((v[0], v[2]), (orig[0], orig[2]));
        let mut w = orig.clone();
        add_noise(&mut w, 7);
        assert!(w.iter().zip(&orig).all(|(a, b)| a != b && (a - b).abs() <= 0.011 * b.abs().max(1e-3)));
    }

    #[test]
    fn only_the_rare_cheat_skips_steps() {
        assert!(Cheat::Noise.lies_now(0.99));
        assert!(Cheat::OneIn(100).lies_now(0.009));
        assert!(!Cheat::OneIn(100).lies_now(0.011));
    }
}
