//! Seeded, platform-independent random bits (SplitMix64).
//!
//! The rotation signs are drawn from here, and the CUDA kernels use the same generator,
//! so a seed gives the same rotation on every engine.

/// SplitMix64: a tiny, well-mixed 64-bit generator with a fixed, documented output.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator for `seed` and an independent `stream` (rotation round, projection, ...).
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut g = SplitMix64 {
            state: seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03),
        };
        g.next_u64();
        g
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `n` random signs (+1.0 or -1.0), one bit of output each, least significant bit first.
    pub fn signs(&mut self, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let w = self.next_u64();
            for bit in 0..64 {
                if out.len() == n {
                    break;
                }
                out.push(if (w >> bit) & 1 == 1 { -1.0 } else { 1.0 });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_and_are_balanced() {
        let a = SplitMix64::new(7, 0).signs(4096);
        let b = SplitMix64::new(7, 1).signs(4096);
        assert_ne!(a, b);
        let sum: f32 = a.iter().sum();
        assert!(sum.abs() < 4.0 * 64.0, "signs unbalanced: {sum}");
        assert_eq!(a, SplitMix64::new(7, 0).signs(4096));
    }
}
