//! Byte buffers that are either owned or borrowed from a memory-mapped index file.
//!
//! A mapped file is *checked*: the index keeps the file open and records its length and
//! modification time when it is mapped; [`MappedFile::verify`] compares them with the file's
//! current state (one `fstat`) before each use, so a file truncated or rewritten in place under
//! the mapping is reported as [`Error::Corrupt`] instead of faulting (`SIGBUS`) or silently
//! changing results. Replacing the file by a rename (what [`super::Index::save`] does) is
//! harmless: the mapping keeps the old file's data.

use crate::error::{Error, Result};
use memmap2::Mmap;
use std::fs::File;
use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

/// A read-only mapping of a whole file, with the file state it was mapped at.
#[derive(Debug)]
pub struct MappedFile {
    map: Mmap,
    file: File,
    len: u64,
    modified: Option<SystemTime>,
}

impl MappedFile {
    /// Maps `file` read-only.
    pub fn new(file: File) -> Result<MappedFile> {
        let meta = file.metadata()?;
        // SAFETY: the mapping is read-only. Its one hazard, the file shrinking or changing
        // under it, is checked by `verify` before every use of the bytes (see the module doc);
        // the length is taken from the same open file the mapping is made of.
        let map = unsafe { Mmap::map(&file)? };
        if map.len() as u64 != meta.len() {
            return Err(Error::Corrupt(
                "the file changed while it was mapped".into(),
            ));
        }
        Ok(MappedFile {
            map,
            file,
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }

    /// Fails with [`Error::Corrupt`] if the file's length or modification time changed since
    /// it was mapped (truncated, extended or rewritten in place).
    pub fn verify(&self) -> Result<()> {
        let meta = self.file.metadata()?;
        if meta.len() != self.len || meta.modified().ok() != self.modified {
            return Err(Error::Corrupt(format!(
                "the memory-mapped index file changed on disk (length {} -> {}): reload it \
                 (or load with mmap=false to read files that others rewrite)",
                self.len,
                meta.len()
            )));
        }
        Ok(())
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }
}

/// An owned `Vec<u8>` or a range of a shared read-only file mapping (copied on first write).
#[derive(Debug, Clone)]
pub enum Bytes {
    /// Heap bytes.
    Owned(Vec<u8>),
    /// A range of a mapped file.
    Mapped(Arc<MappedFile>, Range<usize>),
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
            Bytes::Mapped(m, r) => &m.bytes()[r.clone()],
        }
    }

    /// Mutable access; a mapped range is copied to the heap first (after checking the file).
    pub fn to_mut(&mut self) -> Result<&mut Vec<u8>> {
        if let Bytes::Mapped(m, _) = self {
            m.verify()?;
            *self = Bytes::Owned(self.as_slice().to_vec());
        }
        match self {
            Bytes::Owned(v) => Ok(v),
            Bytes::Mapped(..) => Err(Error::Corrupt("mapped bytes were not copied".into())),
        }
    }

    /// Checks a mapped file before its bytes are read (nothing to check for owned bytes).
    pub fn verify(&self) -> Result<()> {
        match self {
            Bytes::Owned(_) => Ok(()),
            Bytes::Mapped(m, _) => m.verify(),
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
