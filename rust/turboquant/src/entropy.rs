//! Static-model rANS entropy coding of TurboQuant code streams.
//!
//! The probability of every `b`-bit code is known in advance from the codebook
//! ([`crate::codebook::Codebook::probabilities`]), so a code stream can be compressed to
//! about its Shannon entropy (≈ 3.77 bits per 4-bit code, a ≈ 5 % saving) without storing
//! any statistics next to it. This module is that optional storage-time coder.
//!
//! # Model
//!
//! [`FrequencyModel::from_probabilities`] quantizes the `2^b` probabilities to integer
//! frequencies that sum to `M = 2^15`. Every symbol gets a frequency of at least 1, so any
//! code (even one of probability 0) stays encodable, at a cost of at most 15 bits. The
//! quantization first rounds `p·M` to the nearest integer (floor 1), then moves single units
//! greedily to or from the symbols where that costs the least expected length (`p/(f ± ½)`,
//! a rational approximation of the log-ratio). Only IEEE-754 basic operations are involved, so
//! identical probabilities give identical tables on every platform; encoder and decoder must
//! of course be built from the same probabilities.
//!
//! # Stream format
//!
//! Classic byte-wise rANS with one `u32` state `x` kept in `[L, 256·L)`, `L = 2^23`:
//!
//! * Encoding runs over the symbols in reverse, starting from `x = L`. Before coding a symbol
//!   of frequency `f` and cumulative frequency `c`, the low byte of `x` is emitted while
//!   `x ≥ f·2^16` (`x >>= 8` each time); then `x ← ⌊x/f⌋·M + (x mod f) + c`. The final state
//!   is flushed as 4 bytes.
//! * Byte order: the stream starts with that final state, **little-endian**, followed by the
//!   renormalization bytes in the order the decoder consumes them (the reverse of the order in
//!   which the encoder produced them). There is no header, length or checksum: the symbol
//!   count and the model travel out of band.
//! * Decoding reads the state, then for each symbol looks up the slot `x mod M` in a
//!   `M`-entry table to get the symbol `s`, sets `x ← f_s·⌊x/M⌋ + (x mod M) − c_s`, and
//!   reads bytes (`x ← 256·x + byte`) while `x < L`.
//! * A stream is accepted only if the initial state lies in `[L, 256·L)`, decoding `count`
//!   symbols consumes every byte exactly, and the final state equals `L`. Anything else is
//!   [`Error::Corrupt`].
//!
//! An empty symbol sequence encodes to the 4 bytes of `L` (`00 00 80 00`).

use crate::error::{Error, Result};
use std::fmt;

/// Bits of precision of the quantized frequencies: they sum to `2^SCALE_BITS`.
const SCALE_BITS: u32 = 15;
/// Sum of all quantized frequencies.
const SCALE: u32 = 1 << SCALE_BITS;
/// Mask extracting the slot (`x mod SCALE`) from a state.
const SLOT_MASK: u32 = SCALE - 1;
/// Lower bound of the normalized state interval `[RANS_L, 256·RANS_L)`.
const RANS_L: u32 = 1 << 23;
/// Bytes of the flushed state at the start of a stream.
const STATE_BYTES: usize = 4;
/// Largest alphabet (8-bit codes).
const MAX_SYMBOLS: usize = 256;

/// Per-symbol encoder constants (division by the frequency done by a reciprocal multiply).
#[derive(Clone, Copy, Default)]
struct EncSymbol {
    /// Renormalize (emit bytes) while the state is at least this.
    x_max: u32,
    /// Fixed-point reciprocal of the frequency.
    rcp_freq: u32,
    /// Added to the state: the cumulative frequency (plus `SCALE − 1` when the frequency is 1).
    bias: u32,
    /// `SCALE − freq`.
    cmpl_freq: u32,
    /// Extra right shift applied after the reciprocal multiply.
    rcp_shift: u32,
}

impl EncSymbol {
    fn new(cum: u32, freq: u32) -> EncSymbol {
        debug_assert!((1..SCALE).contains(&freq));
        let x_max = ((RANS_L >> SCALE_BITS) << 8) * freq;
        let cmpl_freq = SCALE - freq;
        if freq < 2 {
            // q = ⌊x·(2^32−1)/2^32⌋ = x − 1 for 1 ≤ x < 2^32; the bias makes up the difference.
            EncSymbol {
                x_max,
                rcp_freq: u32::MAX,
                bias: cum + SCALE - 1,
                cmpl_freq,
                rcp_shift: 0,
            }
        } else {
            // shift = ⌈log2 freq⌉; rcp = ⌈2^(shift+31) / freq⌉ is exact for numerators < 2^31.
            let shift = 32 - (freq - 1).leading_zeros();
            let rcp = (1u64 << (shift + 31)).div_ceil(u64::from(freq));
            EncSymbol {
                x_max,
                rcp_freq: rcp as u32,
                bias: cum,
                cmpl_freq,
                rcp_shift: shift - 1,
            }
        }
    }

    /// The coding step `⌊x/freq⌋·SCALE + (x mod freq) + cum` for `1 ≤ x < freq·2^16`.
    ///
    /// `q` is `⌊x/freq⌋` (exact for `x < 2^31`), or `x − 1` when `freq = 1`, which the bias
    /// makes up for. Every partial sum is at most the result, which is `< 2^31`.
    #[inline(always)]
    fn step(&self, x: u32) -> u32 {
        let q = (((u64::from(x) * u64::from(self.rcp_freq)) >> 32) as u32) >> self.rcp_shift;
        x + self.bias + q * self.cmpl_freq
    }
}

/// Quantized frequency table derived from code probabilities.
///
/// Holds the integer frequencies (summing to `2^15`), the encoder's per-symbol constants and
/// the decoder's `2^15`-entry slot-to-symbol table. Build it once per codebook and reuse it.
#[derive(Clone)]
pub struct FrequencyModel {
    /// Number of symbols (a power of two in `2..=256`).
    n: usize,
    /// Quantized frequencies; zero beyond `n`.
    freq: [u32; MAX_SYMBOLS],
    /// Cumulative frequencies (start of each symbol's slot range); `SCALE` beyond `n`.
    cum: [u32; MAX_SYMBOLS],
    /// Encoder constants; unused beyond `n`.
    enc: [EncSymbol; MAX_SYMBOLS],
    /// Slot → symbol.
    slot_symbol: Box<[u8; SCALE as usize]>,
    /// Lower bound on the bits of state any decoded symbol consumes (for rejecting `count`s
    /// that no stream of the given length could hold, before allocating).
    min_bits_per_symbol: f64,
    /// Entropy of the quantized model in bits per symbol (output-size hint).
    model_bits: f64,
}

impl fmt::Debug for FrequencyModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrequencyModel")
            .field("symbols", &self.n)
            .field("scale_bits", &SCALE_BITS)
            .field("frequencies", &&self.freq[..self.n])
            .finish()
    }
}

impl FrequencyModel {
    /// Build from probabilities (len must be a power of two 2..=256, all finite and >= 0, sum > 0).
    ///
    /// The probabilities need not be normalized. They are quantized to integer frequencies
    /// summing to `2^15`, every symbol getting at least 1 so that any symbol is encodable
    /// (a probability-0 symbol then costs 15 bits). Returns [`Error::InvalidParameter`] for an
    /// invalid vector.
    pub fn from_probabilities(probs: &[f64]) -> Result<FrequencyModel> {
        let n = probs.len();
        if !(2..=MAX_SYMBOLS).contains(&n) || !n.is_power_of_two() {
            return Err(Error::InvalidParameter(format!(
                "entropy model needs a power-of-two number of probabilities in 2..=256, got {n}"
            )));
        }
        if let Some((i, p)) = probs
            .iter()
            .enumerate()
            .find(|(_, p)| !(p.is_finite() && **p >= 0.0))
        {
            return Err(Error::InvalidParameter(format!(
                "probability {i} is {p}; probabilities must be finite and non-negative"
            )));
        }
        let max = probs.iter().copied().fold(0.0f64, f64::max);
        if max <= 0.0 {
            return Err(Error::InvalidParameter(
                "probabilities sum to zero".to_string(),
            ));
        }
        // Scale by the maximum first so the sum cannot overflow; it then lies in [1, 256].
        let sum: f64 = probs.iter().map(|&p| p / max).sum();
        let scale = f64::from(SCALE);
        let mut target = [0.0f64; MAX_SYMBOLS];
        for (t, &p) in target.iter_mut().zip(probs) {
            *t = (p / max) / sum * scale;
        }
        let freq = quantize(&target[..n]);
        Ok(Self::with_frequencies(&freq[..n]))
    }

    /// Rebuild a model from stored integer frequencies (as returned by [`Self::frequencies`]):
    /// a power-of-two count in 2..=256, each at least 1, summing to `2^15`. Files store these,
    /// so decoding never depends on recomputing floating-point probabilities.
    pub fn from_frequencies(freq: &[u32]) -> Result<FrequencyModel> {
        let n = freq.len();
        let valid_count = (2..=MAX_SYMBOLS).contains(&n) && n.is_power_of_two();
        let sum: u64 = freq.iter().map(|&f| u64::from(f)).sum();
        if !valid_count || freq.contains(&0) || sum != u64::from(SCALE) {
            return Err(Error::Corrupt(format!(
                "entropy frequency table of {n} entries summing to {sum} is invalid"
            )));
        }
        Ok(Self::with_frequencies(freq))
    }

    /// The quantized frequencies, one per symbol, summing to `2^15`.
    pub fn frequencies(&self) -> &[u32] {
        &self.freq[..self.n]
    }

    fn with_frequencies(freq: &[u32]) -> FrequencyModel {
        let n = freq.len();
        let scale = f64::from(SCALE);
        let mut model = FrequencyModel {
            n,
            freq: [0; MAX_SYMBOLS],
            cum: [SCALE; MAX_SYMBOLS],
            enc: [EncSymbol::default(); MAX_SYMBOLS],
            slot_symbol: Box::new([0u8; SCALE as usize]),
            min_bits_per_symbol: 0.0,
            model_bits: 0.0,
        };
        let mut start = 0u32;
        let mut fmax = 0u32;
        for (s, &f) in freq.iter().enumerate() {
            model.freq[s] = f;
            model.cum[s] = start;
            model.enc[s] = EncSymbol::new(start, f);
            model.slot_symbol[start as usize..(start + f) as usize].fill(s as u8);
            let pf = f64::from(f) / scale;
            model.model_bits -= pf * pf.log2();
            start += f;
            fmax = fmax.max(f);
        }
        debug_assert_eq!(start, SCALE);
        // While x ≥ L (so ⌊x/M⌋ ≥ 256), one decode step maps x to at most
        // x·(256·fmax + M)/(257·M) < x: that ratio bounds how slowly the state can shrink.
        let rho = (256.0 * f64::from(fmax) + scale) / (257.0 * scale);
        model.min_bits_per_symbol = -rho.log2();
        model
    }

    /// Number of symbols.
    pub fn symbols(&self) -> usize {
        self.n
    }

    /// Expected code length in bits per symbol under this quantized model for the given true
    /// probabilities (cross-entropy), for reporting.
    ///
    /// The probabilities are normalized by their sum. Excludes the 4-byte state flush.
    /// Returns NaN if `probs` has the wrong length, holds a negative or non-finite value, or
    /// sums to zero.
    pub fn expected_bits(&self, probs: &[f64]) -> f64 {
        if probs.len() != self.n || probs.iter().any(|p| !(p.is_finite() && *p >= 0.0)) {
            return f64::NAN;
        }
        let sum: f64 = probs.iter().sum();
        if !(sum > 0.0 && sum.is_finite()) {
            return f64::NAN;
        }
        let scale = f64::from(SCALE);
        probs
            .iter()
            .zip(&self.freq[..self.n])
            .filter(|(&p, _)| p > 0.0)
            .map(|(&p, &f)| -(p / sum) * (f64::from(f) / scale).log2())
            .sum()
    }
}

/// Integer frequencies ≥ 1 summing to `SCALE`, close to the real-valued `target` (which sums
/// to `SCALE`). Rounds, then moves single units where the expected code length changes least.
fn quantize(target: &[f64]) -> [u32; MAX_SYMBOLS] {
    let mut freq = [0u32; MAX_SYMBOLS];
    let mut total: u64 = 0;
    for (f, &t) in freq.iter_mut().zip(target) {
        // t ≤ SCALE, so the cast cannot saturate.
        *f = ((t + 0.5).floor() as u32).clamp(1, SCALE);
        total += u64::from(*f);
    }
    let n = target.len();
    // Each pass changes the total by one; |total − SCALE| ≤ 1.5·n, so this is O(n²) at worst.
    while total > u64::from(SCALE) {
        // Take a unit from the symbol where it costs least: ΔL ≈ p·ln(f/(f−1)) ≈ p/(f − ½).
        let mut best: Option<(usize, f64)> = None;
        for (i, (&f, &t)) in freq[..n].iter().zip(target).enumerate() {
            if f > 1 {
                let cost = t / (f64::from(f) - 0.5);
                if best.is_none_or(|(_, c)| cost < c) {
                    best = Some((i, cost));
                }
            }
        }
        // n ≤ 256 < SCALE, so some frequency exceeds 1 whenever total > SCALE.
        let Some((i, _)) = best else { break };
        freq[i] -= 1;
        total -= 1;
    }
    while total < u64::from(SCALE) {
        // Give a unit to the symbol where it saves most: ΔL ≈ p·ln((f+1)/f) ≈ p/(f + ½).
        let mut best = 0usize;
        let mut best_gain = -1.0f64;
        for (i, (&f, &t)) in freq[..n].iter().zip(target).enumerate() {
            let gain = t / (f64::from(f) + 0.5);
            if gain > best_gain {
                best = i;
                best_gain = gain;
            }
        }
        freq[best] += 1;
        total += 1;
    }
    freq
}

/// Encode `symbols` (each < model.symbols(), else Err(InvalidParameter)) into bytes.
///
/// The output is the stream described in the [module documentation](self): a 4-byte
/// little-endian state followed by the renormalization bytes. Its length is about
/// `symbols.len() · H / 8 + 4` bytes, `H` being the cross-entropy of the symbols under the
/// model. The symbol count is not stored; pass it to [`decode`].
pub fn encode(symbols: &[u8], model: &FrequencyModel) -> Result<Vec<u8>> {
    let n = model.n;
    if n < MAX_SYMBOLS {
        if let Some(i) = symbols.iter().position(|&s| usize::from(s) >= n) {
            return Err(Error::InvalidParameter(format!(
                "symbol {} at position {i} is out of range for a {n}-symbol model",
                symbols[i]
            )));
        }
    }
    let hint = (symbols.len() as f64 * model.model_bits * (1.05 / 8.0)) as usize;
    let mut out: Vec<u8> = Vec::with_capacity(hint.min(symbols.len().saturating_mul(2)) + 16);
    let mut x = RANS_L;
    for &s in symbols.iter().rev() {
        let e = &model.enc[usize::from(s)];
        // At most two iterations: x < 2^31 and x_max ≥ 2^16.
        while x >= e.x_max {
            out.push(x as u8);
            x >>= 8;
        }
        // Here L/256 ≤ x < freq·2^16, so the step cannot overflow.
        x = e.step(x);
    }
    // Pushed big-endian, so that after the reversal the stream starts with x little-endian.
    out.extend_from_slice(&x.to_be_bytes());
    out.reverse();
    Ok(out)
}

/// Decode exactly `count` symbols; Err(Corrupt) on truncated/garbage input (never panic, never loop forever, never allocate more than count bytes of output plus O(1)).
///
/// `bytes` must be a whole stream from [`encode`] with the same model and the same `count`:
/// a stream that is truncated, has trailing bytes, or does not end in the initial state is
/// rejected with [`Error::Corrupt`], and so is a `count` larger than any stream of this length
/// could hold (checked before allocating). Runs in `O(count + bytes.len())`.
pub fn decode(bytes: &[u8], count: usize, model: &FrequencyModel) -> Result<Vec<u8>> {
    let Some((head, body)) = bytes.split_first_chunk::<STATE_BYTES>() else {
        return Err(Error::Corrupt(format!(
            "rANS stream of {} bytes is shorter than its {STATE_BYTES}-byte state",
            bytes.len()
        )));
    };
    let mut x = u32::from_le_bytes(*head);
    if !(RANS_L..(RANS_L << 8)).contains(&x) {
        return Err(Error::Corrupt(format!(
            "rANS initial state {x:#x} is outside [2^23, 2^31)"
        )));
    }
    // Each byte read raises log2(x) by < log2(257); each symbol lowers it by at least
    // `min_bits_per_symbol`; log2(x) starts below 31 and must end at 23.
    let budget = 8.0 + body.len() as f64 * 257f64.log2();
    let max_count = budget / model.min_bits_per_symbol * (1.0 + 1e-9) + 2.0;
    if count as f64 > max_count {
        return Err(Error::Corrupt(format!(
            "{count} symbols cannot be held in a {}-byte rANS stream",
            bytes.len()
        )));
    }
    let mut out: Vec<u8> = Vec::new();
    out.try_reserve_exact(count)
        .map_err(|_| Error::InvalidParameter(format!("cannot allocate {count} decoded symbols")))?;
    out.resize(count, 0);

    let table = &*model.slot_symbol;
    let mut pos = 0usize;
    for o in out.iter_mut() {
        let slot = x & SLOT_MASK;
        let s = table[slot as usize];
        let si = usize::from(s);
        // x ≥ 2^23 ⇒ ⌊x/M⌋ ≥ 256, and cum[s] ≤ slot < cum[s] + freq[s]: the result lies in
        // [256, x], so nothing overflows or underflows.
        x = model.freq[si] * (x >> SCALE_BITS) + slot - model.cum[si];
        // At most two iterations: x ≥ 256 after the step above.
        while x < RANS_L {
            let Some(&b) = body.get(pos) else {
                return Err(Error::Corrupt(
                    "rANS stream is truncated (ran out of bytes)".to_string(),
                ));
            };
            x = (x << 8) | u32::from(b);
            pos += 1;
        }
        *o = s;
    }
    if pos != body.len() {
        return Err(Error::Corrupt(format!(
            "rANS stream has {} unread trailing bytes",
            body.len() - pos
        )));
    }
    if x != RANS_L {
        return Err(Error::Corrupt(format!(
            "rANS final state {x:#x} is not the initial state {RANS_L:#x}"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// xorshift64* — deterministic test randomness.
    struct XorShift(u64);

    impl XorShift {
        fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        /// Uniform in [0, 1).
        fn uniform(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// A discretized standard Gaussian over `n` equal bins spanning ±5σ (tails ~1e-6 at b = 8).
    fn gaussian_probs(n: usize) -> Vec<f64> {
        let width = 10.0 / n as f64;
        let raw: Vec<f64> = (0..n)
            .map(|i| {
                let c = (i as f64 - (n as f64 - 1.0) / 2.0) * width;
                (-0.5 * c * c).exp()
            })
            .collect();
        let s: f64 = raw.iter().sum();
        raw.iter().map(|r| r / s).collect()
    }

    fn entropy(probs: &[f64]) -> f64 {
        let s: f64 = probs.iter().sum();
        probs
            .iter()
            .filter(|&&p| p > 0.0)
            .map(|&p| -(p / s) * (p / s).log2())
            .sum()
    }

    /// `len` symbols drawn from `probs` by inverse CDF.
    fn sample(probs: &[f64], len: usize, seed: u64) -> Vec<u8> {
        let mut cdf = Vec::with_capacity(probs.len());
        let mut acc = 0.0;
        for &p in probs {
            acc += p;
            cdf.push(acc);
        }
        let total = acc;
        let mut rng = XorShift(seed | 1);
        (0..len)
            .map(|_| {
                let u = rng.uniform() * total;
                cdf.partition_point(|&c| c <= u).min(probs.len() - 1) as u8
            })
            .collect()
    }

    #[test]
    fn entropy_round_trip_all_bit_widths() {
        for b in 1..=8u32 {
            let n = 1usize << b;
            let probs = gaussian_probs(n);
            let model = FrequencyModel::from_probabilities(&probs).unwrap();
            assert_eq!(model.symbols(), n);
            assert_eq!(model.freq[..n].iter().sum::<u32>(), SCALE);
            assert!(model.freq[..n].iter().all(|&f| f >= 1));
            for (k, &len) in [0usize, 1, 7, 100_000].iter().enumerate() {
                let symbols = sample(&probs, len, 0x9E37 + 31 * u64::from(b) + k as u64);
                let bytes = encode(&symbols, &model).unwrap();
                assert!(bytes.len() >= STATE_BYTES);
                let back = decode(&bytes, len, &model).unwrap();
                assert_eq!(back, symbols, "b={b} len={len}");
            }
        }
        // The empty stream is exactly the little-endian initial state.
        let model = FrequencyModel::from_probabilities(&[0.5, 0.5]).unwrap();
        assert_eq!(encode(&[], &model).unwrap(), vec![0x00, 0x00, 0x80, 0x00]);
    }

    #[test]
    fn entropy_round_trip_every_symbol_value() {
        // Uniform and sequential inputs exercise every slot range, including freq-1 symbols.
        for b in 1..=8u32 {
            let n = 1usize << b;
            let model = FrequencyModel::from_probabilities(&gaussian_probs(n)).unwrap();
            let symbols: Vec<u8> = (0..5000).map(|i| (i % n) as u8).collect();
            let bytes = encode(&symbols, &model).unwrap();
            assert_eq!(decode(&bytes, symbols.len(), &model).unwrap(), symbols);
        }
    }

    #[test]
    fn entropy_size_close_to_shannon_bound() {
        let probs = gaussian_probs(16);
        let h = entropy(&probs);
        let model = FrequencyModel::from_probabilities(&probs).unwrap();
        let count = 100_000;
        let symbols = sample(&probs, count, 12345);
        let bytes = encode(&symbols, &model).unwrap();
        let ideal = count as f64 * h / 8.0 + 16.0;
        let size = bytes.len() as f64;
        assert!(
            (size - ideal).abs() <= 0.01 * ideal,
            "size {size} vs ideal {ideal} (H = {h})"
        );
        let bits = size * 8.0 / count as f64;
        assert!(bits < 3.5, "{bits} bits/symbol is no saving over 4");
        let cross = model.expected_bits(&probs);
        assert!(cross >= h - 1e-12 && cross < h * 1.001, "{cross} vs {h}");
        assert_eq!(decode(&bytes, count, &model).unwrap(), symbols);
    }

    #[test]
    fn entropy_real_codebook_report() {
        for b in [2u8, 4] {
            let cb = crate::codebook::get(128, b).unwrap();
            let probs = cb.probabilities();
            let h = entropy(probs);
            let model = FrequencyModel::from_probabilities(probs).unwrap();
            let count = 1_000_000;
            let symbols = sample(probs, count, 777 + u64::from(b));
            let bytes = encode(&symbols, &model).unwrap();
            let bits = bytes.len() as f64 * 8.0 / count as f64;
            println!(
                "codebook d=128 b={b}: entropy {h:.4} bits, model cross-entropy {:.4} bits, \
                 measured {bits:.4} bits/symbol ({:.2}% saving vs {b} bits)",
                model.expected_bits(probs),
                100.0 * (1.0 - bits / f64::from(b))
            );
            assert!((bits - h).abs() < 0.01 * h, "{bits} vs {h}");
            assert_eq!(decode(&bytes, count, &model).unwrap(), symbols);
        }
    }

    #[test]
    fn entropy_zero_probability_symbols_round_trip() {
        let probs = [0.5, 0.5 - 1e-12, 1e-12, 0.0];
        let model = FrequencyModel::from_probabilities(&probs).unwrap();
        assert!(model.freq[..4].iter().all(|&f| f >= 1));
        let symbols = vec![3u8, 0, 1, 2, 3, 3, 0, 2, 1, 1, 0, 3];
        let bytes = encode(&symbols, &model).unwrap();
        assert_eq!(decode(&bytes, symbols.len(), &model).unwrap(), symbols);
        // Only the most probable symbols in a very skewed model, and a long run.
        for probs in [vec![1.0, 0.0], vec![1.0, 0.0, 0.0, 0.0], vec![0.0, 1.0]] {
            let model = FrequencyModel::from_probabilities(&probs).unwrap();
            let top = probs.iter().position(|&p| p == 1.0).unwrap() as u8;
            for len in [1usize, 100_000, 1_000_000] {
                let symbols = vec![top; len];
                let bytes = encode(&symbols, &model).unwrap();
                let bound = len as f64 * model.expected_bits(&probs) / 8.0 + 6.0;
                assert!((bytes.len() as f64) <= bound, "{} > {bound}", bytes.len());
                assert_eq!(decode(&bytes, len, &model).unwrap(), symbols);
            }
            let mut rare = vec![top; 1000];
            rare[500] = top ^ 1;
            let bytes = encode(&rare, &model).unwrap();
            assert_eq!(decode(&bytes, rare.len(), &model).unwrap(), rare);
        }
    }

    #[test]
    fn entropy_reciprocal_matches_division() {
        let mut rng = XorShift(0xDEAD_BEEF);
        for freq in 1..SCALE {
            let cum = SCALE - freq;
            let e = EncSymbol::new(cum, freq);
            let exact = |x: u32| (x / freq) * SCALE + x % freq + cum;
            // The encoder only steps states in [L/256, x_max) (after renormalization).
            let (lo, hi) = (RANS_L >> 8, e.x_max - 1);
            for x in [lo, hi, freq * 256, hi / 2 + 1, RANS_L.min(hi)] {
                assert_eq!(e.step(x), exact(x), "freq={freq} x={x}");
            }
            for _ in 0..16 {
                let x = lo + (rng.next_u64() % u64::from(hi - lo + 1)) as u32;
                assert_eq!(e.step(x), exact(x), "freq={freq} x={x}");
            }
        }
    }

    #[test]
    fn entropy_corrupt_input_is_rejected() {
        let probs = gaussian_probs(16);
        let model = FrequencyModel::from_probabilities(&probs).unwrap();
        let count = 2000;
        let symbols = sample(&probs, count, 99);
        let bytes = encode(&symbols, &model).unwrap();
        assert_eq!(decode(&bytes, count, &model).unwrap(), symbols);

        // Every truncation.
        for cut in 0..bytes.len() {
            assert!(
                matches!(decode(&bytes[..cut], count, &model), Err(Error::Corrupt(_))),
                "truncation to {cut} bytes accepted"
            );
        }
        // Trailing garbage.
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer, count, &model).is_err());
        // Wrong counts.
        for wrong in [0, 1, count - 1, count + 1, count + 5, 2 * count, usize::MAX] {
            assert!(
                matches!(decode(&bytes, wrong, &model), Err(Error::Corrupt(_))),
                "count {wrong} accepted"
            );
        }
        // Single flipped bits.
        let mut rng = XorShift(4242);
        for _ in 0..500 {
            let mut bad = bytes.clone();
            let i = (rng.next_u64() % bad.len() as u64) as usize;
            bad[i] ^= 1 << (rng.next_u64() % 8);
            if let Ok(v) = decode(&bad, count, &model) {
                // rANS has no checksum; a flip could in principle decode to other symbols,
                // but never to the original with a different stream.
                assert_ne!(v, symbols);
            }
        }
        // Random garbage of many lengths and counts, for several alphabet sizes.
        for b in [1u32, 4, 8] {
            let model = FrequencyModel::from_probabilities(&gaussian_probs(1 << b)).unwrap();
            for trial in 0..2000 {
                let len = (rng.next_u64() % 64) as usize;
                let garbage: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
                let cnt = if trial % 2 == 0 {
                    (rng.next_u64() % 200) as usize
                } else {
                    (rng.next_u64() % (1 << 40)) as usize
                };
                assert!(
                    decode(&garbage, cnt, &model).is_err(),
                    "garbage accepted: b={b} len={len} count={cnt}"
                );
            }
        }
        // A huge count on a short stream fails fast without allocating.
        let mut huge = vec![0xFFu8; 4];
        huge[3] = 0x40;
        assert!(decode(&huge, usize::MAX / 2, &model).is_err());
    }

    #[test]
    fn entropy_invalid_parameters() {
        let model = FrequencyModel::from_probabilities(&gaussian_probs(4)).unwrap();
        assert!(matches!(
            encode(&[0, 1, 2, 3, 4], &model),
            Err(Error::InvalidParameter(_))
        ));
        assert!(matches!(
            encode(&[255], &model),
            Err(Error::InvalidParameter(_))
        ));
        // Every u8 is valid for an 8-bit model.
        let model8 = FrequencyModel::from_probabilities(&gaussian_probs(256)).unwrap();
        let all: Vec<u8> = (0..=255).collect();
        let bytes = encode(&all, &model8).unwrap();
        assert_eq!(decode(&bytes, 256, &model8).unwrap(), all);

        let bad: Vec<Vec<f64>> = vec![
            vec![],
            vec![1.0],
            vec![0.2, 0.3, 0.5],
            vec![0.5, f64::NAN],
            vec![0.5, f64::INFINITY],
            vec![0.5, -0.1],
            vec![0.0, 0.0, 0.0, 0.0],
            vec![1.0 / 512.0; 512],
        ];
        for p in &bad {
            assert!(
                matches!(
                    FrequencyModel::from_probabilities(p),
                    Err(Error::InvalidParameter(_))
                ),
                "accepted {} probabilities",
                p.len()
            );
        }
        // Unnormalized and huge-but-finite inputs are fine.
        let m = FrequencyModel::from_probabilities(&[f64::MAX, f64::MAX, 0.0, 1.0]).unwrap();
        assert_eq!(m.freq[..4].iter().sum::<u32>(), SCALE);
        assert!(model.expected_bits(&[0.5; 3]).is_nan());
        assert!(model.expected_bits(&[0.0; 4]).is_nan());
        assert!(model.expected_bits(&[0.5, f64::NAN, 0.0, 0.0]).is_nan());
    }

    #[test]
    fn entropy_throughput() {
        let probs = gaussian_probs(16);
        let model = FrequencyModel::from_probabilities(&probs).unwrap();
        let count = 8_000_000;
        let symbols = sample(&probs, count, 2024);
        let t = Instant::now();
        let bytes = encode(&symbols, &model).unwrap();
        let enc_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let back = decode(&bytes, count, &model).unwrap();
        let dec_s = t.elapsed().as_secs_f64();
        assert_eq!(back, symbols);
        let t = Instant::now();
        let _model = FrequencyModel::from_probabilities(&gaussian_probs(256)).unwrap();
        let build_us = t.elapsed().as_secs_f64() * 1e6;
        println!(
            "b=4, {count} symbols: encode {:.0} MB/s, decode {:.0} MB/s (symbols/µs), \
             {:.4} bits/symbol; 256-symbol model build {build_us:.0} µs",
            count as f64 / enc_s / 1e6,
            count as f64 / dec_s / 1e6,
            bytes.len() as f64 * 8.0 / count as f64
        );
    }
}
