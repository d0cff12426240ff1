//! A deterministic Zipf sampler (inverse CDF over a precomputed table) and a small PRNG,
//! so every contender reads exactly the same key sequence.

/// SplitMix64: a tiny, fast, well-mixed PRNG. Deterministic for a seed.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Zipf distribution over ranks `0..n`: `P(rank k) ∝ 1 / (k + 1)^s`.
#[derive(Clone, Debug)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// The distribution over `n` ranks with exponent `s`.
    ///
    /// # Panics
    /// If `n` is zero.
    pub fn new(n: usize, s: f64) -> Self {
        assert!(n > 0, "Zipf over zero ranks");
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 0..n {
            sum += 1.0 / ((k + 1) as f64).powf(s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf }
    }

    /// One rank.
    pub fn sample(&self, rng: &mut SplitMix64) -> usize {
        let u = rng.next_f64();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }

    /// `count` ranks.
    pub fn samples(&self, rng: &mut SplitMix64, count: usize) -> Vec<u32> {
        (0..count).map(|_| self.sample(rng) as u32).collect()
    }

    /// The best hit ratio any cache holding `capacity` entries can reach on an endless
    /// stream of this distribution (it keeps the `capacity` most popular ranks).
    pub fn ideal_hit_ratio(&self, capacity: usize) -> f64 {
        match capacity {
            0 => 0.0,
            c if c >= self.cdf.len() => 1.0,
            c => self.cdf[c - 1],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_favours_low_ranks_and_stays_in_range() {
        let z = Zipf::new(1000, 1.0);
        let mut rng = SplitMix64::new(7);
        let s = z.samples(&mut rng, 100_000);
        assert!(s.iter().all(|&r| r < 1000));
        let zeros = s.iter().filter(|&&r| r == 0).count() as f64 / s.len() as f64;
        // P(0) = 1 / H(1000) ≈ 0.1336.
        assert!((zeros - 0.1336).abs() < 0.01, "{zeros}");
        assert!((z.ideal_hit_ratio(1000) - 1.0).abs() < 1e-9);
    }
}
