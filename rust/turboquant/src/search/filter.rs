//! Per-search filters, resolved to a bit set of allowed storage slots before the scan.

use super::ids::IdMap;

/// Which vectors a search may return. Removed vectors are never returned.
#[derive(Debug, Clone, Copy, Default)]
pub enum Filter<'a> {
    /// Every vector.
    #[default]
    All,
    /// Only vectors whose id is in the list (unknown ids are ignored).
    Ids(&'a [u64]),
    /// `mask[id]` is true for allowed ids (as FAISS `IDSelectorBitmap`); ids past the end are excluded.
    Mask(&'a [bool]),
}

/// A bit set over slots: bit `s % 64` of word `s / 64`.
pub type SlotBits = Vec<u64>;

/// Allowed slots for `filter`, removed slots excluded (`None`: every slot allowed).
pub fn allowed_slots(filter: &Filter<'_>, ids: &IdMap) -> Option<SlotBits> {
    let n = ids.slots();
    let words = n.div_ceil(64);
    let mut bits = match filter {
        Filter::All if !ids.any_dead() => return None,
        Filter::All => vec![u64::MAX; words],
        Filter::Ids(list) => {
            let mut b = vec![0u64; words];
            for s in list.iter().filter_map(|&id| ids.slot_of(id)) {
                b[s / 64] |= 1 << (s % 64);
            }
            b
        }
        Filter::Mask(mask) => {
            let mut b = vec![0u64; words];
            for s in 0..n {
                if usize::try_from(ids.id_of(s)).is_ok_and(|i| mask.get(i) == Some(&true)) {
                    b[s / 64] |= 1 << (s % 64);
                }
            }
            b
        }
    };
    for (w, d) in bits.iter_mut().zip(ids.dead_bits()) {
        *w &= !d;
    }
    Some(bits)
}

/// The 32 allow bits of block `b` (slots `32b .. 32b + 32`).
#[inline]
pub fn block_bits(bits: &[u64], b: usize) -> u32 {
    bits.get(b / 2).map_or(0, |w| (w >> (32 * (b % 2))) as u32)
}
