//! The KV store of one attention layer: `B × H` token streams of packed keys and values.

use super::side::{SideCodec, SideSpec, SideStream};
use crate::error::{Error, Result};

/// What a [`KvStore`] holds and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvConfig {
    /// Channels per head `D` (2..=65535).
    pub head_dim: usize,
    /// KV heads `H` per batch row.
    pub kv_heads: usize,
    /// How keys are stored.
    pub key: SideSpec,
    /// How values are stored.
    pub value: SideSpec,
    /// Seed of the rotations.
    pub seed: u64,
}

/// Packed keys and values of one attention layer for a batch, appended token by token (see
/// the [module doc](super) for the layout). Nothing stored is ever re-quantized.
///
/// ```
/// use turboquant::kv::{AttendParams, KvConfig, KvStore, SideSpec};
/// let side = SideSpec { bits: 4, outliers: 0, outlier_bits: 4, center: true };
/// let cfg = KvConfig { head_dim: 64, kv_heads: 2, key: side, value: side, seed: 0 };
/// let mut store = KvStore::new(cfg).unwrap();
/// let (b, h, t, d) = (1, 2, 100, 64);
/// let k: Vec<f32> = (0..b * h * t * d).map(|i| (i as f32 * 0.37).sin()).collect();
/// store.append(&k, &k, b, t).unwrap();
/// // 4 query heads (GQA 2:1), one query each, attending all 100 tokens
/// let q: Vec<f32> = (0..4 * d).map(|i| (i as f32 * 0.11).cos()).collect();
/// let (mut out, mut lse) = (vec![0.0; 4 * d], vec![0.0; 4]);
/// let p = AttendParams { query_heads: 4, q_len: 1, lo: &[0], hi: &[100], scaling: 0.125, softcap: None, exact: None };
/// store.attend(&q, &p, &mut out, &mut lse).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct KvStore {
    pub(super) config: KvConfig,
    pub(super) key: SideCodec,
    pub(super) value: SideCodec,
    pub(super) batch: usize,
    pub(super) len: usize,
    /// Key side of each stream (`b·H + h`).
    pub(super) keys: Vec<SideStream>,
    /// Value side of each stream.
    pub(super) values: Vec<SideStream>,
}

/// Largest number of values one call may pass (2^40): bounds every allocation made from sizes.
const MAX_VALUES: usize = 1 << 40;

/// `a · b · …` or an error naming `what` when it overflows or exceeds [`MAX_VALUES`].
pub(super) fn checked_size(factors: &[usize], what: &str) -> Result<usize> {
    let mut n = 1usize;
    for &f in factors {
        n = n
            .checked_mul(f)
            .filter(|&v| v <= MAX_VALUES)
            .ok_or_else(|| Error::InvalidParameter(format!("{what} is too large")))?;
    }
    Ok(n)
}

impl KvStore {
    /// An empty store.
    pub fn new(config: KvConfig) -> Result<KvStore> {
        if !(2..=u16::MAX as usize).contains(&config.head_dim) {
            return Err(Error::InvalidParameter(format!(
                "head_dim must be in 2..=65535, got {}",
                config.head_dim
            )));
        }
        if !(1..=1 << 16).contains(&config.kv_heads) {
            return Err(Error::InvalidParameter(format!(
                "kv heads must be in 1..=65536, got {}",
                config.kv_heads
            )));
        }
        Ok(KvStore {
            key: SideCodec::new(config.head_dim, config.key, config.seed)?,
            value: SideCodec::new(config.head_dim, config.value, config.seed)?,
            config,
            batch: 0,
            len: 0,
            keys: Vec::new(),
            values: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &KvConfig {
        &self.config
    }
    /// Batch rows (0 before the first append).
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// Tokens stored per stream.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when no token is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held: every stream's row buffers (their capacity), centres and channel orders.
    pub fn nbytes(&self) -> usize {
        let keys: usize = self.keys.iter().map(|s| self.key.stream_bytes(s)).sum();
        let values: usize = self.values.iter().map(|s| self.value.stream_bytes(s)).sum();
        keys + values
    }

    /// Appends `tokens` new tokens per stream: `keys` and `values` are `batch × H × tokens × D`
    /// row-major. The first append fixes the batch size. Only the new tokens are quantized.
    pub fn append(
        &mut self,
        keys: &[f32],
        values: &[f32],
        batch: usize,
        tokens: usize,
    ) -> Result<()> {
        let (h, d) = (self.config.kv_heads, self.config.head_dim);
        let n = checked_size(&[batch, h, tokens, d], "the appended block")?;
        for (name, x) in [("keys", keys), ("values", values)] {
            if x.len() != n {
                return Err(Error::ShapeMismatch(format!(
                    "{name} hold {} values, expected {batch}×{h}×{tokens}×{d} = {n}",
                    x.len()
                )));
            }
            if let Some(bad) = x.iter().find(|v| !v.is_finite()) {
                return Err(Error::NonFinite(format!("{name} hold {bad}")));
            }
        }
        if batch == 0 {
            return Err(Error::InvalidParameter("batch must be at least 1".into()));
        }
        if self.batch != 0 && batch != self.batch {
            return Err(Error::ShapeMismatch(format!(
                "the store holds {} batch rows, the new tokens have {batch}",
                self.batch
            )));
        }
        checked_size(&[batch, h, self.len + tokens, d], "the stored sequence")?;
        if tokens == 0 {
            return Ok(());
        }
        let fresh = vec![SideStream::default(); batch * h];
        let (keys_now, values_now) = if self.batch == 0 {
            (&fresh[..], &fresh[..])
        } else {
            (&self.keys[..], &self.values[..])
        };
        // Quantize both sides before changing anything: a failure leaves the store as it was.
        let k = self.key.quantize(keys_now, keys, tokens)?;
        let v = self.value.quantize(values_now, values, tokens)?;
        if self.batch == 0 {
            self.keys = fresh.clone();
            self.values = fresh;
        }
        self.key.commit(&mut self.keys, k);
        self.value.commit(&mut self.values, v);
        self.batch = batch;
        self.len += tokens;
        Ok(())
    }

    /// Reconstructs every stored key and value: two `batch × H × len × D` arrays.
    pub fn decompress(&self, keys: &mut [f32], values: &mut [f32]) -> Result<()> {
        let d = self.config.head_dim;
        let n = self.keys.len() * self.len * d;
        if keys.len() != n || values.len() != n {
            return Err(Error::ShapeMismatch(format!(
                "outputs must hold {n} values each, got {} and {}",
                keys.len(),
                values.len()
            )));
        }
        let per = self.len * d;
        for (i, (k, v)) in self.keys.iter().zip(&self.values).enumerate() {
            self.key
                .decode(k, self.len, &mut keys[i * per..(i + 1) * per])?;
            self.value
                .decode(v, self.len, &mut values[i * per..(i + 1) * per])?;
        }
        Ok(())
    }

    /// Keeps the first `len` tokens of every stream (no effect when `len ≥` [`KvStore::len`]).
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        for s in &mut self.keys {
            self.key.truncate(s, len);
        }
        for s in &mut self.values {
            self.value.truncate(s, len);
        }
        self.len = len;
    }

    /// Keeps the batch rows `rows` in that order (a row may repeat): beam reordering, selection.
    pub fn select(&mut self, rows: &[usize]) -> Result<()> {
        if self.batch == 0 {
            return Ok(());
        }
        if let Some(&bad) = rows.iter().find(|&&r| r >= self.batch) {
            return Err(Error::InvalidParameter(format!(
                "batch index {bad} out of range for {} rows",
                self.batch
            )));
        }
        if rows.is_empty() {
            return Err(Error::InvalidParameter(
                "cannot select zero batch rows".into(),
            ));
        }
        checked_size(&[rows.len(), self.config.kv_heads], "the selected batch")?;
        let h = self.config.kv_heads;
        let pick = |side: &[SideStream]| -> Vec<SideStream> {
            rows.iter()
                .flat_map(|&r| side[r * h..(r + 1) * h].iter().cloned())
                .collect()
        };
        self.keys = pick(&self.keys);
        self.values = pick(&self.values);
        self.batch = rows.len();
        Ok(())
    }

    /// Repeats every batch row `repeats` times in place (`[a, b]` → `[a, a, b, b]`).
    pub fn repeat_interleave(&mut self, repeats: usize) -> Result<()> {
        if repeats == 0 {
            return Err(Error::InvalidParameter("repeats must be at least 1".into()));
        }
        let rows: Vec<usize> = (0..self.batch)
            .flat_map(|r| std::iter::repeat_n(r, repeats))
            .collect();
        self.select(&rows)
    }

    /// Drops everything: the store is as new.
    pub fn reset(&mut self) {
        self.keys = Vec::new();
        self.values = Vec::new();
        self.batch = 0;
        self.len = 0;
    }
}
