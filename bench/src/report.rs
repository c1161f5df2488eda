//! Output: one `metric <name> <value>` line per figure on stdout, notes on stderr.

use std::collections::HashMap;
use std::io::Write;

/// The figures printed so far, kept so that ratios can be derived from them.
#[derive(Debug, Default)]
pub struct Report {
    values: HashMap<String, f64>,
}

impl Report {
    /// Prints `metric <name> <value>` at once (flushed, so a later failure keeps it) and keeps
    /// the value for [`Report::ratio`]. A non-finite value prints as `nan`.
    pub fn metric(&mut self, name: &str, value: f64) {
        self.values.insert(name.to_string(), value);
        let shown = if value.is_finite() {
            format_value(value)
        } else {
            "nan".to_string()
        };
        let mut out = std::io::stdout().lock();
        // A closed stdout is not worth aborting a benchmark for.
        let _ = writeln!(out, "metric {name} {shown}");
        let _ = out.flush();
    }

    /// A figure printed so far.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.get(name).copied()
    }

    /// Prints `name` = `numerator / denominator` from figures already printed: nothing when
    /// one of them was not measured in this run (`--only`), `nan` when one is not a number or
    /// the denominator is zero.
    pub fn ratio(&mut self, name: &str, numerator: &str, denominator: &str) {
        let (Some(n), Some(d)) = (self.values.get(numerator), self.values.get(denominator)) else {
            return;
        };
        let value = if *d == 0.0 { f64::NAN } else { n / d };
        self.metric(name, value);
    }
}

/// Three significant decimals for small values, whole numbers for large ones.
fn format_value(value: f64) -> String {
    if value.abs() >= 1000.0 || value == value.trunc() {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

/// A human note on stderr.
pub fn note(text: impl AsRef<str>) {
    eprintln!("[bench] {}", text.as_ref());
}

/// The `q` quantile (nearest rank) of `values`, sorted in place; NaN when empty.
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentile_is_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(super::percentile(&mut v, 0.50), 50.0);
        assert_eq!(super::percentile(&mut v, 0.99), 99.0);
        assert_eq!(super::percentile(&mut v, 1.0), 100.0);
        assert!(super::percentile(&mut [], 0.5).is_nan());
    }

    use super::*;

    #[test]
    fn formats_by_magnitude() {
        assert_eq!(format_value(123456.7), "123457");
        assert_eq!(format_value(42.0), "42");
        assert_eq!(format_value(31.26), "31.3");
        assert_eq!(format_value(0.8123), "0.812");
    }

    #[test]
    fn ratio_needs_both_figures() {
        let mut r = Report::default();
        r.metric("a", 10.0);
        r.ratio("r", "a", "b");
        assert!(!r.values.contains_key("r"));
        r.metric("b", f64::NAN);
        r.ratio("r", "a", "b");
        assert!(r.values["r"].is_nan());
        r.metric("b", 4.0);
        r.ratio("r", "a", "b");
        assert_eq!(r.values["r"], 2.5);
    }
}
