//! Index files: save, load into memory, or load with the code blocks memory-mapped.
//!
//! ```text
//! header(kind 3, see crate::format) | index version u8 (=3) | metric u8 (0 ip, 1 cosine, 2 l2)
//! | rerank u8 | centre u8 (0 off, 1 auto: not fixed yet, 2 fixed) | fixed: centre f32 × dim
//! | slots n u64 | next id u64
//! | ids u64 × n | tombstones u64 × ⌈n/64⌉ | scales f32 × n
//! | biases f32 × n (when centred or l2; see search::index)
//! | code blocks ⌈n/32⌉ × block_bytes (the search::layout layout)
//! | rerank: fp16 originals n × dim × 2 bytes | crc32
//! ```
//! All little-endian. Loading checks the checksum, every length against the file size, the
//! quantizer parameters, id uniqueness and range, and that unused slots hold zero codes, so a
//! damaged file gives [`Error::Corrupt`]. With `mmap`, the code blocks and originals stay in
//! the mapping (the checksum still reads the whole file once), checked against the file's
//! length and modification time before each use ([`super::storage`]).
//!
//! Version 3 reordered the 3-bit code blocks (spans of 16 vectors × 4 pairs, for the int8-query
//! kernel).

use super::center::Center;
use super::ids::IdMap;
use super::index::{Index, Metric};
use super::layout::{Layout, BLOCK};
use super::storage::Bytes;
use super::storage::MappedFile;
use crate::bytes::{ByteReader, ByteWriter};
use crate::error::{Error, Result};
use crate::format::{read_header_params, write_header, Kind};
use crate::quantizer::{Mode, ScaleMode};
use std::fs::OpenOptions;
use std::io::Write;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Version of the index section written by this build.
pub const INDEX_VERSION: u8 = 3;

fn metric_code(m: Metric) -> u8 {
    match m {
        Metric::InnerProduct => 0,
        Metric::Cosine => 1,
        Metric::L2 => 2,
    }
}

fn corrupt(msg: impl Into<String>) -> Error {
    Error::Corrupt(msg.into())
}

impl Index {
    /// The index as bytes (the file format above).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = ByteWriter::new();
        write_header(&mut w, Kind::Index, &self.quantizer);
        w.u8(INDEX_VERSION)
            .u8(metric_code(self.metric))
            .u8(self.rerank as u8);
        match &self.center {
            Center::Off => w.u8(0),
            Center::Auto => w.u8(1),
            Center::Fixed(c) => w.u8(2).f32s(c),
        };
        let n = self.ids.slots();
        w.u64(n as u64).u64(self.next_id);
        for slot in 0..n {
            w.u64(self.ids.id_of(slot));
        }
        for &word in self.ids.dead_bits() {
            w.u64(word);
        }
        w.f32s(&self.scales).f32s(&self.biases);
        w.bytes(self.codes.as_slice())
            .bytes(self.originals.as_slice());
        w.finish_with_crc()
    }

    /// Rebuilds an index from [`Index::to_bytes`] (copies the data).
    pub fn from_bytes(data: &[u8]) -> Result<Index> {
        parse(data, |r| Bytes::Owned(data[r].to_vec()))
    }

    /// Writes the index to `path` atomically: the bytes go to a new temporary file in the same
    /// folder (a unique name, so concurrent saves never share one), which is flushed to disk,
    /// renamed over `path`, and the folder flushed too. Readers see the old file or the new one,
    /// never a partial file; on any error the temporary file is removed.
    ///
    /// ```
    /// use turboquant::search::{Filter, Index, IndexOptions};
    /// let mut index = Index::new(16, IndexOptions::default())?;
    /// index.add_with_ids(&[0.5; 32], &[7, 9])?;
    /// let path = std::env::temp_dir().join("turboquant_doc_index.tqi");
    /// index.save(&path)?;
    /// let back = Index::load(&path, true)?;
    /// assert_eq!(back.search(&[0.5; 16], 2, &Filter::All)?, index.search(&[0.5; 16], 2, &Filter::All)?);
    /// # std::fs::remove_file(&path).ok();
    /// # Ok::<(), turboquant::Error>(())
    /// ```
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.verify_mapping()?;
        write_atomic(path.as_ref(), &self.to_bytes())
    }

    /// Reads an index file.
    ///
    /// With `mmap`, the code blocks (and originals) are served from a read-only mapping of the
    /// file, *checked* before each use (see [`super::storage`]): if the file is truncated or
    /// rewritten in place, searches fail with [`Error::Corrupt`] instead of crashing or
    /// returning changed results. A change that races with a running search is not covered:
    /// load with `mmap = false` (a private copy in memory) for files that others may rewrite
    /// in place. Replacing the file by [`Index::save`] (a rename) is always safe. Adding to a
    /// mapped index first copies the blocks to memory.
    pub fn load(path: impl AsRef<Path>, mmap: bool) -> Result<Index> {
        let file = std::fs::File::open(path)?;
        if !mmap {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut &file, &mut data)?;
            return Index::from_bytes(&data);
        }
        let map = Arc::new(MappedFile::new(file)?);
        let ix = parse(map.bytes(), |r| Bytes::Mapped(Arc::clone(&map), r))?;
        // the checksum was read from the mapping: make sure the file did not change meanwhile
        map.verify()?;
        Ok(ix)
    }
}

/// Process-wide counter that makes temporary names unique between threads.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `data` to `path` through a uniquely named temporary file in the same folder,
/// `fsync`ed, renamed into place, and the folder `fsync`ed; removes the temporary on error.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::Io(format!("{} is not a file path", path.display())))?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let (mut file, tmp) = loop {
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(
            ".{}.{}.{nanos:08x}.tmp",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = dir.join(tmp_name);
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => break (f, tmp),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let written = file
        .write_all(data)
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            drop(file);
            std::fs::rename(&tmp, path)
        });
    if let Err(e) = written {
        std::fs::remove_file(&tmp).ok();
        return Err(e.into());
    }
    // the rename is durable once the folder is flushed (not possible on every platform)
    if let Ok(d) = std::fs::File::open(&dir) {
        d.sync_all().ok();
    }
    Ok(())
}

/// Parses the format; `bytes` turns a range of `data` into a buffer (copy or mapping).
fn parse(data: &[u8], bytes: impl Fn(Range<usize>) -> Bytes) -> Result<Index> {
    let mut r = ByteReader::with_crc(data)?;
    let body = data.len() - 4;
    let h = read_header_params(&mut r, Kind::Index)?;
    if h.mode != Mode::Mse || h.scale != ScaleMode::Proj {
        return Err(corrupt(
            "index quantizer must be MSE mode with the proj scale",
        ));
    }
    let v = r.u8()?;
    if v != INDEX_VERSION {
        return Err(corrupt(format!(
            "index version {v}, this build reads {INDEX_VERSION}"
        )));
    }
    let metric = match r.u8()? {
        0 => Metric::InnerProduct,
        1 => Metric::Cosine,
        2 => Metric::L2,
        m => return Err(corrupt(format!("unknown metric {m}"))),
    };
    let rerank = match r.u8()? {
        0 => false,
        1 => true,
        x => return Err(corrupt(format!("bad rerank flag {x}"))),
    };
    let center = match r.u8()? {
        0 => Center::Off,
        1 => Center::Auto,
        2 => Center::Fixed(r.f32s(h.dim)?),
        x => return Err(corrupt(format!("bad centre flag {x}"))),
    };
    let n = r.len(12)?;
    if u32::try_from(n).is_err() {
        return Err(corrupt("too many slots"));
    }
    let next_id = r.u64()?;
    if n > 0 && center == Center::Auto {
        return Err(corrupt("vectors stored with an undecided centre"));
    }
    let has_biases = center.vector().is_some() || metric == Metric::L2;
    // Every section's size is checked against the file before anything is built.
    let layout = Layout::new(h.dim, h.bits);
    let overflow = || corrupt("index data size overflows");
    let ids_raw = r.bytes(8 * n)?;
    let dead_raw = r.bytes(8 * n.div_ceil(64))?;
    let scales_raw = r.bytes(4 * n)?;
    let biases_raw = r.bytes(if has_biases { 4 * n } else { 0 })?;
    let mut section = |count: usize, unit: usize| {
        let len = count.checked_mul(unit).ok_or_else(overflow)?;
        let start = body - r.remaining();
        r.bytes(len)?;
        Ok::<_, Error>(start..start + len)
    };
    let codes_range = section(n.div_ceil(BLOCK), layout.block_bytes())?;
    let originals_range = if rerank {
        Some(section(n, 2usize.checked_mul(h.dim).ok_or_else(overflow)?)?)
    } else {
        None
    };
    r.finish()?;
    let words = |raw: &[u8]| -> Vec<u64> {
        raw.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect()
    };
    let floats = |raw: &[u8]| -> Vec<f32> {
        raw.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect()
    };
    let ids = IdMap::from_parts(&words(ids_raw), words(dead_raw), next_id)?;
    let scales = floats(scales_raw);
    let biases = floats(biases_raw);
    let center_values = center.vector().unwrap_or(&[]);
    if scales
        .iter()
        .chain(&biases)
        .chain(center_values)
        .any(|v| !v.is_finite())
    {
        return Err(corrupt("non-finite scale, bias or centre"));
    }
    let mut ix = Index::empty(h.build()?, metric, rerank);
    ix.next_id = next_id;
    ix.center = center;
    ix.ids = ids;
    ix.scales = scales;
    ix.biases = biases;
    ix.codes = bytes(codes_range);
    if let Some(range) = originals_range {
        ix.originals = bytes(range);
    }
    check_unused_slots_zero(&ix, n)?;
    Ok(ix)
}

/// The slots past `n` in the last block must hold zero codes (later adds OR into them).
fn check_unused_slots_zero(ix: &Index, n: usize) -> Result<()> {
    if n.is_multiple_of(BLOCK) {
        return Ok(());
    }
    let bb = ix.layout.block_bytes();
    let codes = ix.codes.as_slice();
    let last = &codes[codes.len() - bb..];
    for v in n % BLOCK..BLOCK {
        let nonzero = match ix.layout {
            super::layout::Layout::Rows { row_bytes, .. } => last
                [v * row_bytes..(v + 1) * row_bytes]
                .iter()
                .any(|&b| b != 0),
            layout => (0..layout.groups()).any(|g| layout.group_code(last, v, g) != 0),
        };
        if nonzero {
            return Err(corrupt("unused slots hold codes"));
        }
    }
    Ok(())
}
