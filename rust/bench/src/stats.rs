//! Latency samples and their summary, and error bookkeeping.

use std::cell::RefCell;
use std::time::Duration;

use serde_json::{json, Value};

/// Error messages kept in the output, beyond which they are only counted.
const KEPT_ERRORS: usize = 5;

/// Samples in microseconds. A sorted `Vec` is exact and small enough: even
/// a long run keeps well under a million samples.
#[derive(Debug, Default, Clone)]
pub struct Samples(Vec<f64>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1e6);
    }

    pub fn push_us(&mut self, us: f64) {
        self.0.push(us);
    }

    pub fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `{"count", "median", "p99", "min", "max", "mean"}` in microseconds,
    /// or null without samples.
    pub fn summary(&self) -> Value {
        if self.0.is_empty() {
            return Value::Null;
        }
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let round = |x: f64| (x * 10.0).round() / 10.0;
        json!({
            "count": v.len(),
            "median": round(percentile(&v, 50.0)),
            "p99": round(percentile(&v, 99.0)),
            "min": round(v[0]),
            "max": round(v[v.len() - 1]),
            "mean": round(mean),
        })
    }
}

/// The `p`th percentile of sorted values, interpolating linearly between
/// the two nearest ranks.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let k = (n - 1) as f64 * p / 100.0;
            let lo = k.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (k - lo as f64)
        }
    }
}

/// Errors of a scenario: all counted, the first few kept.
#[derive(Debug, Default)]
pub struct Errors {
    inner: RefCell<(u64, Vec<String>)>,
}

impl Errors {
    pub fn add(&self, e: String) {
        let mut inner = self.inner.borrow_mut();
        inner.0 += 1;
        if inner.1.len() < KEPT_ERRORS {
            inner.1.push(e);
        }
    }

    pub fn count(&self) -> u64 {
        self.inner.borrow().0
    }

    pub fn samples(&self) -> Vec<String> {
        self.inner.borrow().1.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.5);
        assert!((percentile(&v, 99.0) - 99.01).abs() < 1e-9);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn summaries() {
        let mut s = Samples::default();
        assert_eq!(s.summary(), Value::Null);
        for us in [30.0, 10.0, 20.0] {
            s.push_us(us);
        }
        s.push(Duration::from_micros(40));
        let sum = s.summary();
        assert_eq!(sum["count"], 4);
        assert_eq!(sum["median"], 25.0);
        assert_eq!(sum["min"], 10.0);
        assert_eq!(sum["max"], 40.0);
        assert_eq!(sum["mean"], 25.0);
    }

    #[test]
    fn errors_keep_the_first_few() {
        let e = Errors::default();
        for i in 0..8 {
            e.add(format!("e{i}"));
        }
        assert_eq!(e.count(), 8);
        assert_eq!(e.samples(), vec!["e0", "e1", "e2", "e3", "e4"]);
    }
}
