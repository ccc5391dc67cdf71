//! Byte buffers that are either owned or borrowed from a memory-mapped index file.

use memmap2::Mmap;
use std::ops::Range;
use std::sync::Arc;

/// An owned `Vec<u8>` or a range of a shared read-only file mapping (copied on first write).
#[derive(Debug, Clone)]
pub enum Bytes {
    /// Heap bytes.
    Owned(Vec<u8>),
    /// A range of a mapped file.
    Mapped(Arc<Mmap>, Range<usize>),
}

impl Default for Bytes {
    fn default() -> Self {
        Bytes::Owned(Vec::new())
    }
}

impl Bytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped(m, r) => &m[r.clone()],
        }
    }

    /// Mutable access; a mapped range is copied to the heap first.
    pub fn to_mut(&mut self) -> &mut Vec<u8> {
        if let Bytes::Mapped(..) = self {
            *self = Bytes::Owned(self.as_slice().to_vec());
        }
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped(..) => unreachable!("converted to owned above"),
        }
    }

    /// Bytes held: the allocation for owned bytes, the mapped length for a mapping.
    pub fn held_bytes(&self) -> usize {
        match self {
            Bytes::Owned(v) => v.capacity(),
            Bytes::Mapped(_, r) => r.len(),
        }
    }

    /// Whether the bytes live in a file mapping.
    pub fn is_mapped(&self) -> bool {
        matches!(self, Bytes::Mapped(..))
    }
}
