//! How the next token is chosen: the one settings type every layer passes
//! around (the engine's sampler, the trainer's reference generation, the HTTP
//! API, the CLI and the wire all read this struct).

/// Sampling settings: greedy when `temperature` is 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0: greedy.
    pub temperature: f64,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: u32,
    /// Keep the smallest set of tokens whose probability reaches p (1: all).
    pub top_p: f64,
    /// Seed of the sampler's random stream.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self::GREEDY
    }
}

impl Sampling {
    /// Always the most likely token.
    pub const GREEDY: Sampling = Sampling { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 };

    /// Whether choosing a token draws from the random stream (it does unless greedy).
    pub fn draws(&self) -> bool {
        self.temperature > 0.0
    }

    /// Check the ranges every sampler needs; the message says which setting is wrong.
    pub fn check(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!("temperature must be a finite number >= 0, not {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be within (0, 1], not {}", self.top_p));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_the_default_and_draws_nothing() {
        assert_eq!(Sampling::default(), Sampling::GREEDY);
        assert!(!Sampling::GREEDY.draws());
        assert!(Sampling { temperature: 0.5, ..Sampling::GREEDY }.draws());
    }

    #[test]
    fn out_of_range_settings_are_named() {
        assert!(Sampling::GREEDY.check().is_ok());
        let hot = Sampling { temperature: -1.0, ..Sampling::GREEDY };
        assert!(hot.check().unwrap_err().contains("temperature"));
        let nan = Sampling { temperature: f64::NAN, ..Sampling::GREEDY };
        assert!(nan.check().unwrap_err().contains("temperature"));
        for top_p in [0.0, 1.5, f64::NAN] {
            let s = Sampling { top_p, ..Sampling::GREEDY };
            assert!(s.check().unwrap_err().contains("top_p"), "{top_p}");
        }
    }
}
