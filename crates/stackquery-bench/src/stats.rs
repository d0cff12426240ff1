//! Timing loops and summary statistics.
//!
//! Per-operation figures come from batches: the clock is read once before and once after
//! a batch of `batch` operations, and the batch's time divided by `batch` is one sample.
//! The median of the samples is what the report shows; the spread (min–max) is shown
//! beside it as the noise indicator.

use std::future::Future;
use std::hint::black_box;
use std::time::Instant;

/// Median of `samples` (the mean of the two middle values for an even count).
///
/// # Panics
/// If `samples` is empty or holds a NaN.
pub fn median(samples: &[f64]) -> f64 {
    percentile(samples, 0.5)
}

/// The `p`-quantile (`0.0..=1.0`) of `samples`, linearly interpolated.
///
/// # Panics
/// If `samples` is empty or holds a NaN.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    assert!(!samples.is_empty(), "no samples");
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("NaN sample"));
    let pos = p.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Smallest sample.
pub fn min(samples: &[f64]) -> f64 {
    samples.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Largest sample.
pub fn max(samples: &[f64]) -> f64 {
    samples.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// Runs one warm-up batch and then `reps` timed batches of `batch` calls of `op(i)`
/// (`i` counts calls from 0, across batches); returns nanoseconds per call, one sample
/// per batch. `before_batch` runs before each batch, outside the timing (a barrier, say).
pub async fn ns_per_op<F, Fut, R>(
    reps: usize,
    batch: usize,
    before_batch: impl FnMut(),
    op: F,
) -> Vec<f64>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = R>,
{
    batch_spans(reps, batch, before_batch, op)
        .await
        .into_iter()
        .map(|(start, end)| (end - start).as_nanos() as f64 / batch as f64)
        .collect()
}

/// [`ns_per_op`]'s loop, returning when each timed batch started and ended: threads that
/// run batches side by side can then be timed together, from the first start to the last
/// end.
pub async fn batch_spans<F, Fut, R>(
    reps: usize,
    batch: usize,
    mut before_batch: impl FnMut(),
    mut op: F,
) -> Vec<(Instant, Instant)>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = R>,
{
    let mut i = 0usize;
    for _ in 0..batch {
        black_box(op(i).await);
        i = i.wrapping_add(1);
    }
    let mut spans = Vec::with_capacity(reps);
    for _ in 0..reps {
        before_batch();
        let start = Instant::now();
        for _ in 0..batch {
            black_box(op(i).await);
            i = i.wrapping_add(1);
        }
        spans.push((start, Instant::now()));
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.0), 1.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 1.0), 5.0);
        assert_eq!(min(&[2.0, 1.0]), 1.0);
        assert_eq!(max(&[2.0, 1.0]), 2.0);
    }
}
