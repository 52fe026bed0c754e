//! Order statistics of a handful of samples.

use serde::{Deserialize, Serialize};

/// Median, p90 (nearest rank), min, max and mean of some samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p90: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

/// The summary of `values` (None when empty). NaNs are dropped.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    let rank = ((0.9 * n as f64).ceil() as usize).clamp(1, n);
    Some(Summary {
        n,
        median,
        p90: v[rank - 1],
        min: v[0],
        max: v[n - 1],
        mean: v.iter().sum::<f64>() / n as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_small_samples() {
        assert_eq!(summarize(&[]), None);
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!(
            (s.median, s.p90, s.min, s.max, s.mean),
            (2.0, 3.0, 1.0, 3.0, 2.0)
        );
        let s = summarize(&(1..=10).map(f64::from).collect::<Vec<_>>()).unwrap();
        assert_eq!((s.median, s.p90), (5.5, 9.0));
    }
}
