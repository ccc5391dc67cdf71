//! Little-endian byte writer and bounds-checked reader for the crate's file formats.
//!
//! Every read checks the remaining length first and returns [`Error::Corrupt`] instead of
//! panicking; a CRC-32 trailer guards each file against silent corruption.

use crate::error::{Error, Result};

/// Appends little-endian values to a byte vector.
#[derive(Debug, Default)]
pub struct ByteWriter {
    buf: Vec<u8>,
}

impl ByteWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    /// Appends a `u8`.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    /// Appends a `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    /// Appends a `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    /// Appends a `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    /// Appends `f32` values.
    pub fn f32s(&mut self, v: &[f32]) -> &mut Self {
        self.buf.reserve(4 * v.len());
        for x in v {
            self.buf.extend_from_slice(&x.to_le_bytes());
        }
        self
    }
    /// Appends the CRC-32 of everything written so far and returns the bytes.
    pub fn finish_with_crc(mut self) -> Vec<u8> {
        let crc = crc32fast::hash(&self.buf);
        self.u32(crc);
        self.buf
    }
}

/// Reads little-endian values from a byte slice, never past its end.
#[derive(Debug)]
pub struct ByteReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> ByteReader<'a> {
    /// Verifies the CRC-32 trailer and returns a reader over the bytes before it.
    pub fn with_crc(data: &'a [u8]) -> Result<ByteReader<'a>> {
        if data.len() < 4 {
            return Err(Error::Corrupt("file shorter than its checksum".into()));
        }
        let (body, tail) = data.split_at(data.len() - 4);
        let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
        if crc32fast::hash(body) != stored {
            return Err(Error::Corrupt(
                "checksum mismatch: the file is damaged".into(),
            ));
        }
        Ok(ByteReader { buf: body, pos: 0 })
    }
    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::Corrupt(format!(
                "truncated: needed {n} more bytes, {} left",
                self.remaining()
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    /// The next `u8`.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes(1)?[0])
    }
    /// The next `u16`.
    pub fn u16(&mut self) -> Result<u16> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    /// The next `u32`.
    pub fn u32(&mut self) -> Result<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// The next `u64`.
    pub fn u64(&mut self) -> Result<u64> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// A length field that must fit the remaining bytes at `unit` bytes per element.
    pub fn len(&mut self, unit: usize) -> Result<usize> {
        let n = self.u64()?;
        let n = usize::try_from(n).map_err(|_| Error::Corrupt("length overflows".into()))?;
        if n.checked_mul(unit).is_none_or(|b| b > self.remaining()) {
            return Err(Error::Corrupt(format!("length {n} exceeds the file")));
        }
        Ok(n)
    }
    /// The next `n` `f32` values.
    pub fn f32s(&mut self, n: usize) -> Result<Vec<f32>> {
        let b = self.bytes(
            n.checked_mul(4)
                .ok_or_else(|| Error::Corrupt("length overflows".into()))?,
        )?;
        Ok(b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
    /// Fails unless every byte was read.
    pub fn finish(&self) -> Result<()> {
        if self.remaining() != 0 {
            return Err(Error::Corrupt(format!(
                "{} unexpected trailing bytes",
                self.remaining()
            )));
        }
        Ok(())
    }
}
