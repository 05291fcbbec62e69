//! A model's weights as one flat `f32` vector in name order, and back; and the blob of
//! weights plus outer momentum that a joining node fetches.

use candle_core::{Device, Tensor};
use odin_model::Weights;

use crate::error::{Result, TrainError};

/// Which tensor lives where in the flat vector: names in order, with their shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    entries: Vec<(String, Vec<usize>)>,
}

impl Layout {
    /// The layout of `w` (name order, as `Weights` iterates).
    pub fn of(w: &Weights) -> Self {
        Self { entries: w.iter().map(|(k, t)| (k.clone(), t.dims().to_vec())).collect() }
    }

    /// Values in the flat vector.
    pub fn len(&self) -> usize {
        self.entries.iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// Whether it holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `w` as one vector; its tensors must be this layout's.
    pub fn flatten(&self, w: &Weights) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.len());
        for (name, shape) in &self.entries {
            let t = w.get(name, shape)?;
            out.extend(t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// The weights a flat vector stands for, on `device`.
    pub fn unflatten(&self, flat: &[f32], device: &Device) -> Result<Weights> {
        if flat.len() != self.len() {
            return Err(TrainError::Data(format!(
                "a flat weights vector of {} values does not fit a layout of {}",
                flat.len(),
                self.len()
            )));
        }
        let mut w = Weights::new(Default::default());
        let mut at = 0;
        for (name, shape) in &self.entries {
            let n: usize = shape.iter().product();
            w.insert(name.clone(), Tensor::from_slice(&flat[at..at + n], shape.as_slice(), device)?);
            at += n;
        }
        Ok(w)
    }
}

/// The state a round starts from: weights and outer momentum, as little-endian f32 bytes
/// (weights first), which is what joiners fetch in chunks.
#[derive(Debug, Clone, PartialEq)]
pub struct StateBlob {
    /// The weights.
    pub theta: Vec<f32>,
    /// The outer optimizer's momentum.
    pub momentum: Vec<f32>,
}

impl StateBlob {
    /// Its bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.theta.iter().chain(&self.momentum).flat_map(|v| v.to_le_bytes()).collect()
    }

    /// Read a blob of `params` weights and as many momentum values; every value must be finite.
    pub fn from_bytes(b: &[u8], params: usize) -> Result<Self> {
        if b.len() != params * 8 {
            return Err(TrainError::Data(format!(
                "a state blob of {} bytes does not hold {params} weights and their momentum",
                b.len()
            )));
        }
        let all: Vec<f32> = b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if let Some(i) = all.iter().position(|v| !v.is_finite()) {
            return Err(TrainError::Data(format!("a state blob holds a non-finite value at {i}")));
        }
        let momentum = all[params..].to_vec();
        let mut theta = all;
        theta.truncate(params);
        Ok(Self { theta, momentum })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn flatten_and_unflatten_are_inverse_and_ordered_by_name() {
        let d = Device::Cpu;
        let mut m = BTreeMap::new();
        m.insert("b".to_string(), Tensor::new(&[[1f32, 2.], [3., 4.]], &d).unwrap());
        m.insert("a".to_string(), Tensor::new(&[5f32, 6., 7.], &d).unwrap());
        let w = Weights::new(m);
        let l = Layout::of(&w);
        let flat = l.flatten(&w).unwrap();
        assert_eq!(flat, vec![5., 6., 7., 1., 2., 3., 4.]);
        let back = l.unflatten(&flat, &d).unwrap();
        assert_eq!(l.flatten(&back).unwrap(), flat);
        assert!(l.unflatten(&flat[1..], &d).is_err());
    }

    #[test]
    fn state_blobs_round_trip_and_refuse_bad_bytes() {
        let s = StateBlob { theta: vec![1.0, -2.0], momentum: vec![0.5, 0.25] };
        let b = s.to_bytes();
        assert_eq!(StateBlob::from_bytes(&b, 2).unwrap(), s);
        assert!(StateBlob::from_bytes(&b[1..], 2).is_err());
        let mut nan = b.clone();
        nan[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(StateBlob::from_bytes(&nan, 2).unwrap_err().to_string().contains("non-finite"));
    }
}
