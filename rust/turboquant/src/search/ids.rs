//! Id ↔ slot bookkeeping with tombstones.
//!
//! While every id equals its insertion slot (automatic ids, the common case) nothing is
//! stored per vector but a tombstone bit. The first id that breaks this switches to a
//! slot → id vector plus an id → slot hash map (counted in [`IdMap::held_bytes`]).

use crate::error::{Error, Result};
use std::collections::HashMap;

/// Ids of the slots `0..slots()`, live or removed.
#[derive(Debug, Clone, Default)]
pub struct IdMap {
    /// Slots ever used.
    n: usize,
    /// Live slots.
    live: usize,
    /// Tombstone bit per slot: bit `s % 64` of word `s / 64`.
    dead: Vec<u64>,
    /// `None` while `id == slot` for every slot.
    sparse: Option<Sparse>,
}

#[derive(Debug, Clone, Default)]
struct Sparse {
    ids: Vec<u64>,
    slots: HashMap<u64, u32>,
}

impl IdMap {
    /// Slots ever used (live and removed).
    pub fn slots(&self) -> usize {
        self.n
    }
    /// Live slots.
    pub fn len(&self) -> usize {
        self.live
    }
    /// Whether no slot is live.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }
    /// Whether any slot was removed.
    pub fn any_dead(&self) -> bool {
        self.live < self.n
    }
    /// The tombstone bits.
    pub fn dead_bits(&self) -> &[u64] {
        &self.dead
    }
    /// Whether `slot` was removed.
    pub fn is_dead(&self, slot: usize) -> bool {
        self.dead[slot / 64] >> (slot % 64) & 1 == 1
    }
    /// The slot of a live id.
    pub fn slot_of(&self, id: u64) -> Option<usize> {
        match &self.sparse {
            Some(s) => s.slots.get(&id).map(|&s| s as usize),
            None => usize::try_from(id)
                .ok()
                .filter(|&s| s < self.n && !self.is_dead(s)),
        }
    }
    /// The id of `slot`.
    pub fn id_of(&self, slot: usize) -> u64 {
        match &self.sparse {
            Some(s) => s.ids[slot],
            None => slot as u64,
        }
    }

    /// Appends slots for `ids` (checked by the caller: new, unique).
    pub fn push(&mut self, ids: &[u64]) {
        let first = self.n;
        let identity = ids
            .iter()
            .enumerate()
            .all(|(i, &id)| id == (first + i) as u64);
        if !identity && self.sparse.is_none() {
            let slots = (0..first)
                .filter(|&s| !self.is_dead(s))
                .map(|s| (s as u64, s as u32))
                .collect();
            self.sparse = Some(Sparse {
                ids: (0..first as u64).collect(),
                slots,
            });
        }
        if let Some(s) = &mut self.sparse {
            s.ids.extend_from_slice(ids);
            s.slots.reserve(ids.len());
            for (i, &id) in ids.iter().enumerate() {
                s.slots.insert(id, (first + i) as u32);
            }
        }
        self.n += ids.len();
        self.live += ids.len();
        self.dead.resize(self.n.div_ceil(64), 0);
    }

    /// Tombstones a live id; false if it is not live.
    pub fn remove(&mut self, id: u64) -> bool {
        let Some(slot) = self.slot_of(id) else {
            return false;
        };
        if let Some(s) = &mut self.sparse {
            s.slots.remove(&id);
        }
        self.dead[slot / 64] |= 1 << (slot % 64);
        self.live -= 1;
        true
    }

    /// Bytes held: tombstones, and in sparse mode the id vector and the hash map's buckets.
    pub fn held_bytes(&self) -> usize {
        let sparse = self.sparse.as_ref().map_or(0, |s| {
            let buckets = if s.slots.capacity() == 0 {
                0
            } else {
                (s.slots.capacity() * 8 / 7).next_power_of_two()
            };
            8 * s.ids.capacity() + buckets * (std::mem::size_of::<(u64, u32)>() + 1)
        });
        8 * self.dead.capacity() + sparse
    }

    /// Rebuilds the map from per-slot ids and tombstones (as stored in a file), checking that
    /// live ids are unique, every id is below `next_id`, and no tombstone lies past the end.
    pub fn from_parts(ids: &[u64], dead: Vec<u64>, next_id: u64) -> Result<IdMap> {
        let n = ids.len();
        let corrupt = |m: String| Error::Corrupt(m);
        if dead.len() != n.div_ceil(64)
            || (!n.is_multiple_of(64) && dead.last().is_some_and(|&w| w >> (n % 64) != 0))
        {
            return Err(corrupt("tombstone bits do not match the slots".into()));
        }
        let mut map = IdMap {
            n: 0,
            live: 0,
            dead: Vec::new(),
            sparse: None,
        };
        map.push(ids);
        map.dead = dead;
        map.live = n - map
            .dead
            .iter()
            .map(|w| w.count_ones() as usize)
            .sum::<usize>();
        if let Some(s) = &mut map.sparse {
            s.slots.clear();
        }
        let mut live = 0;
        for (slot, &id) in ids.iter().enumerate() {
            if id >= next_id || id > i64::MAX as u64 {
                return Err(corrupt(format!("id {id} out of range")));
            }
            if map.is_dead(slot) {
                continue;
            }
            live += 1;
            if let Some(s) = &mut map.sparse {
                if s.slots.insert(id, slot as u32).is_some() {
                    return Err(corrupt(format!("duplicate id {id}")));
                }
            }
        }
        debug_assert_eq!(live, map.live);
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_until_a_foreign_id_then_sparse() {
        let mut m = IdMap::default();
        m.push(&[0, 1, 2]);
        assert!(m.sparse.is_none() && m.held_bytes() <= 64);
        assert!(m.remove(1) && !m.remove(1));
        assert_eq!((m.slot_of(2), m.slot_of(1), m.len()), (Some(2), None, 2));
        m.push(&[10]);
        assert!(m.sparse.is_some());
        assert_eq!(
            (m.slot_of(10), m.id_of(3), m.slot_of(1), m.slot_of(0)),
            (Some(3), 10, None, Some(0))
        );
        let back = IdMap::from_parts(&[0, 1, 2, 10], m.dead_bits().to_vec(), 11).unwrap();
        assert_eq!(
            (back.len(), back.slot_of(10), back.slot_of(1)),
            (3, Some(3), None)
        );
        assert!(IdMap::from_parts(&[5, 5], vec![0], 6).is_err());
        assert!(IdMap::from_parts(&[5, 5], vec![1], 6).is_ok());
    }
}
