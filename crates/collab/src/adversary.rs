//! Ways a member can misbehave, for the fault and Byzantine tests and benchmarks: the run
//! must go on, and with a robust aggregator come out close to a clean one.

use std::str::FromStr;

/// How a member behaves.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Behaviour {
    /// Follows the protocol.
    #[default]
    Honest,
    /// Announces, trains, and never sends a commitment.
    Silent,
    /// Trains this many milliseconds slower every round.
    Slow(u64),
    /// Sends its update scaled by this factor (×100 in the benchmark).
    Scale(f32),
    /// Sends its update with the sign flipped.
    Flip,
    /// "A little is enough" (Baruch et al., 2019): waits for the others' updates and sends
    /// their mean minus z standard deviations per coordinate, small enough to pass as honest.
    Alie(f32),
}

impl FromStr for Behaviour {
    type Err = String;

    /// `honest`, `silent`, `slow:MS`, `scale:F`, `flip` or `alie:Z`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, arg) = s.split_once(':').map_or((s, None), |(k, a)| (k, Some(a)));
        let num = |what: &str| -> Result<f64, String> {
            arg.ok_or_else(|| format!("{kind} needs a {what}, as {kind}:N"))?
                .parse::<f64>()
                .map_err(|e| format!("{kind}: {e}"))
        };
        Ok(match kind {
            "honest" => Behaviour::Honest,
            "silent" => Behaviour::Silent,
            "flip" => Behaviour::Flip,
            "slow" => Behaviour::Slow(num("delay in ms")? as u64),
            "scale" => Behaviour::Scale(num("factor")? as f32),
            "alie" => Behaviour::Alie(num("z")? as f32),
            _ => return Err(format!("unknown behaviour {s:?}: honest, silent, slow:MS, scale:F, flip or alie:Z")),
        })
    }
}

impl Behaviour {
    /// The update it sends instead of its honest `delta`; `others` are the updates of the
    /// round it has seen (only ALIE looks at them).
    pub fn distort(&self, delta: &mut [f32], others: &[Vec<f32>]) {
        match *self {
            Behaviour::Scale(f) => delta.iter_mut().for_each(|v| *v *= f),
            Behaviour::Flip => delta.iter_mut().for_each(|v| *v = -*v),
            Behaviour::Alie(z) if !others.is_empty() => {
                let n = others.len() as f64;
                for (j, v) in delta.iter_mut().enumerate() {
                    let mean = others.iter().map(|o| f64::from(o[j])).sum::<f64>() / n;
                    let var = others.iter().map(|o| (f64::from(o[j]) - mean).powi(2)).sum::<f64>() / n;
                    *v = (mean - f64::from(z) * var.sqrt()) as f32;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaviours_parse_and_distort() {
        assert_eq!("scale:100".parse::<Behaviour>().unwrap(), Behaviour::Scale(100.0));
        assert_eq!("slow:250".parse::<Behaviour>().unwrap(), Behaviour::Slow(250));
        assert!("scale".parse::<Behaviour>().is_err());
        assert!("lie".parse::<Behaviour>().is_err());
        let mut d = vec![1.0, -2.0];
        Behaviour::Flip.distort(&mut d, &[]);
        assert_eq!(d, vec![-1.0, 2.0]);
        Behaviour::Alie(1.0).distort(&mut d, &[vec![1.0, 0.0], vec![3.0, 0.0]]);
        assert_eq!(d, vec![1.0, 0.0]);
    }
}
