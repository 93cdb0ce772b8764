//! A qcow2 reader that checks an image's structure, like `qemu-img check`.
//!
//! It reads only the metadata (header, refcount table and blocks, L1 and L2
//! tables) through [`ReadAt`], never the guest data, so checking a large
//! image costs a few reads beyond the one streaming pass that digests it.
//! Each finding is a [`Finding`]: an error makes the image unfit for use, a
//! leak (a cluster counted but unused) is only a warning, as in qemu.

use std::fmt;

/// qcow2 magic, `QFI\xfb`.
pub const MAGIC: u32 = 0x5146_49fb;

/// Incompatible feature bits this checker knows (dirty, corrupt, external
/// data file, compression type, extended L2 entries); others are unknown.
const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

/// Header extension types that matter here.
const EXT_END: u32 = 0;
const EXT_DATA_FILE: u32 = 0x4441_5441;
const EXT_BITMAPS: u32 = 0x2385_2875;
const EXT_CRYPTO: u32 = 0x0537_be77;

/// Offset bits of L1, L2 and refcount table entries (bits 9-55).
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const OFLAG_COMPRESSED: u64 = 1 << 62;
const OFLAG_ZERO: u64 = 1;

/// Largest L1 table qemu accepts (32 MiB): bounds memory on hostile input.
const MAX_L1_BYTES: u64 = 32 * 1024 * 1024;

/// Positioned reads of the image: a file, or bytes in memory in tests.
pub trait ReadAt {
    /// Fills `buf` from `offset`; fails if the image ends before.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(buf.len());
        let bytes = self
            .get(start..end)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The image is unusable or not self-contained.
    Error,
    /// Harmless for a consumer (leaked clusters waste space only).
    Warning,
}

/// One thing found wrong in an image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong, in words, capitalised, no trailing period.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// What the check learnt of a qcow2 image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Summary {
    /// qcow2 version (2 or 3).
    pub version: u32,
    /// Disk size a guest sees, in bytes.
    pub virtual_size: u64,
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// Guest clusters stored plain.
    pub plain_clusters: u64,
    /// Guest clusters stored compressed.
    pub compressed_clusters: u64,
    /// Clusters whose refcount is above their use (wasted space).
    pub leaked_clusters: u64,
    /// Everything found wrong, errors first in order of discovery.
    pub findings: Vec<Finding>,
}

/// Field offsets of the qcow2 header.
struct Header {
    version: u32,
    backing_file_offset: u64,
    backing_file_size: u32,
    cluster_bits: u32,
    size: u64,
    crypt_method: u32,
    l1_size: u32,
    l1_table_offset: u64,
    refcount_table_offset: u64,
    refcount_table_clusters: u32,
    nb_snapshots: u32,
    incompatible: u64,
    refcount_order: u32,
    header_length: u32,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Collects findings; a fatal one stops the walk (nothing after it can be
/// trusted).
struct Check<'a, R: ReadAt + ?Sized> {
    image: &'a R,
    file_size: u64,
    findings: Vec<Finding>,
}

/// Marks the end of the walk after a fatal finding.
struct Fatal;

impl<R: ReadAt + ?Sized> Check<'_, R> {
    fn error(&mut self, message: String) {
        tracing::debug!(%message, "qcow2 check error");
        self.findings.push(Finding {
            severity: Severity::Error,
            message,
        });
    }

    fn fatal(&mut self, message: String) -> Fatal {
        self.error(message);
        Fatal
    }

    /// Reads `len` bytes at `offset`, which were checked to lie in the file.
    fn read(&mut self, offset: u64, len: u64, what: &str) -> Result<Vec<u8>, Fatal> {
        let mut buf = vec![0; usize::try_from(len).map_err(|_| Fatal)?];
        match self.image.read_exact_at(&mut buf, offset) {
            Ok(()) => Ok(buf),
            Err(err) => {
                Err(self.fatal(format!("Cannot read the {what} at offset {offset}: {err}")))
            }
        }
    }
}

/// Checks a qcow2 image of `file_size` bytes read through `image`. Errors of
/// the medium (a read failing) are findings too: the caller has already
/// streamed the file once, so a failing read here means it changed or
/// shrank meanwhile.
pub fn check<R: ReadAt + ?Sized>(image: &R, file_size: u64) -> Qcow2Summary {
    let mut check = Check {
        image,
        file_size,
        findings: Vec::new(),
    };
    let mut summary = Qcow2Summary {
        version: 0,
        virtual_size: 0,
        cluster_size: 0,
        plain_clusters: 0,
        compressed_clusters: 0,
        leaked_clusters: 0,
        findings: Vec::new(),
    };
    // A fatal finding is already recorded; the summary says how far we got.
    let _ = walk(&mut check, &mut summary);
    summary.findings = check.findings;
    summary
}

fn parse_header<R: ReadAt + ?Sized>(check: &mut Check<'_, R>) -> Result<Header, Fatal> {
    if check.file_size < 72 {
        return Err(check.fatal(format!(
            "The image is {} bytes long, too short for a qcow2 header: it is truncated",
            check.file_size
        )));
    }
    let len = check.file_size.min(112);
    let mut b = check.read(0, len, "header")?;
    b.resize(112, 0);
    if be32(&b, 0) != MAGIC {
        return Err(check.fatal("The image does not start with the qcow2 magic".into()));
    }
    let version = be32(&b, 4);
    let mut header = Header {
        version,
        backing_file_offset: be64(&b, 8),
        backing_file_size: be32(&b, 16),
        cluster_bits: be32(&b, 20),
        size: be64(&b, 24),
        crypt_method: be32(&b, 32),
        l1_size: be32(&b, 36),
        l1_table_offset: be64(&b, 40),
        refcount_table_offset: be64(&b, 48),
        refcount_table_clusters: be32(&b, 56),
        nb_snapshots: be32(&b, 60),
        incompatible: 0,
        refcount_order: 4,
        header_length: 72,
    };
    match version {
        2 => {}
        3 => {
            if check.file_size < 104 {
                return Err(check.fatal(
                    "The image is too short for a qcow2 version 3 header: it is truncated".into(),
                ));
            }
            header.incompatible = be64(&b, 72);
            header.refcount_order = be32(&b, 96);
            header.header_length = be32(&b, 100);
            if header.header_length < 104 || header.header_length % 8 != 0 {
                return Err(check.fatal(format!(
                    "The qcow2 header length {} is invalid (at least 104, a multiple of 8)",
                    header.header_length
                )));
            }
        }
        other => {
            return Err(check.fatal(format!(
                "qcow2 version {other} is not supported: only versions 2 and 3 exist"
            )));
        }
    }
    if !(9..=21).contains(&header.cluster_bits) {
        return Err(check.fatal(format!(
            "The cluster size 2^{} is invalid: qcow2 allows 512 bytes to 2 MiB",
            header.cluster_bits
        )));
    }
    if header.refcount_order > 6 {
        return Err(check.fatal(format!(
            "The refcount order {} is invalid (at most 6, 64-bit refcounts)",
            header.refcount_order
        )));
    }
    Ok(header)
}

/// Walks the whole structure; returns early on the first fatal finding.
fn walk<R: ReadAt + ?Sized>(
    check: &mut Check<'_, R>,
    summary: &mut Qcow2Summary,
) -> Result<(), Fatal> {
    let header = parse_header(check)?;
    let cluster_size = 1u64 << header.cluster_bits;
    summary.version = header.version;
    summary.virtual_size = header.size;
    summary.cluster_size = cluster_size;

    // Self-containment: a consumer given this one file must need nothing else.
    if header.backing_file_offset != 0 {
        let name = check
            .read(
                header.backing_file_offset,
                u64::from(header.backing_file_size.min(1023)),
                "backing file name",
            )
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        check.error(format!(
            "The image has a backing file ({name:?}): it is not self-contained; flatten it with qemu-img convert"
        ));
    }
    if header.crypt_method != 0 {
        return Err(check.fatal(format!(
            "The image is encrypted (method {}): verify cannot check encrypted images",
            header.crypt_method
        )));
    }
    if header.incompatible & INCOMPAT_DATA_FILE != 0 {
        check.error(
            "The image keeps its data in an external data file: it is not self-contained".into(),
        );
    }
    let unknown = header.incompatible & !INCOMPAT_KNOWN;
    if unknown != 0 {
        return Err(check.fatal(format!(
            "The image has unknown incompatible feature bits {unknown:#x}: no consumer can be trusted to read it"
        )));
    }
    if header.incompatible & INCOMPAT_EXTL2 != 0 {
        return Err(check.fatal(
            "The image uses extended L2 entries (subclusters): verify cannot check them".into(),
        ));
    }
    if header.incompatible & INCOMPAT_CORRUPT != 0 {
        check.error("The image is marked corrupt by qemu".into());
    }
    if header.incompatible & INCOMPAT_DIRTY != 0 {
        check.error(
            "The image is marked dirty (not closed cleanly): its refcounts cannot be trusted; repair it with qemu-img check -r all".into(),
        );
    }
    if header.nb_snapshots != 0 {
        return Err(check.fatal(format!(
            "The image has {} internal snapshots: verify cannot check them; export one with qemu-img convert",
            header.nb_snapshots
        )));
    }
    header_extensions(check, &header, cluster_size)?;
    if check
        .findings
        .iter()
        .any(|f| f.message.contains("external data file"))
    {
        // The data clusters live elsewhere: nothing below would make sense.
        return Err(Fatal);
    }

    let mut counter = Counter::new(check.file_size, cluster_size);
    // The header cluster (and extensions, which must fit in it).
    counter.use_range(
        check,
        0,
        cluster_size.min(check.file_size.max(1)),
        "header",
        true,
    )?;

    // L1 table.
    let l1_bytes = u64::from(header.l1_size) * 8;
    if l1_bytes > MAX_L1_BYTES {
        return Err(check.fatal(format!(
            "The L1 table has {} entries, more than qemu accepts",
            header.l1_size
        )));
    }
    let l2_entries = cluster_size / 8;
    let needed_l1 = header.size.div_ceil(cluster_size * l2_entries);
    if u64::from(header.l1_size) < needed_l1 {
        return Err(check.fatal(format!(
            "The L1 table has {} entries, too few for a {}-byte disk ({needed_l1} needed)",
            header.l1_size, header.size
        )));
    }
    let l1 = if l1_bytes == 0 {
        Vec::new()
    } else {
        check.aligned(header.l1_table_offset, cluster_size, "L1 table")?;
        counter.use_range(check, header.l1_table_offset, l1_bytes, "L1 table", true)?;
        check.read(header.l1_table_offset, l1_bytes, "L1 table")?
    };

    // Refcount table.
    let table_bytes = u64::from(header.refcount_table_clusters) * cluster_size;
    if table_bytes == 0 {
        return Err(check.fatal("The refcount table is empty".into()));
    }
    check.aligned(header.refcount_table_offset, cluster_size, "refcount table")?;
    counter.use_range(
        check,
        header.refcount_table_offset,
        table_bytes,
        "refcount table",
        true,
    )?;
    let table = check.read(header.refcount_table_offset, table_bytes, "refcount table")?;
    let mut blocks = Vec::new();
    for (index, chunk) in table.chunks_exact(8).enumerate() {
        let entry = u64::from_be_bytes(chunk.try_into().expect("8 bytes"));
        let offset = entry & !0x1ff;
        if entry & 0x1ff != 0 {
            check.error(format!(
                "Refcount table entry {index} has reserved bits set ({entry:#x})"
            ));
        }
        if offset == 0 {
            blocks.push(None);
            continue;
        }
        check.aligned(offset, cluster_size, "refcount block")?;
        counter.use_range(check, offset, cluster_size, "refcount block", true)?;
        blocks.push(Some(offset));
    }

    // L1 -> L2 -> data.
    let x = 62 - (header.cluster_bits - 8);
    let guest_clusters = header.size.div_ceil(cluster_size);
    for (l1_index, chunk) in l1.chunks_exact(8).enumerate() {
        let entry = u64::from_be_bytes(chunk.try_into().expect("8 bytes"));
        let l2_offset = entry & OFFSET_MASK;
        if l2_offset == 0 {
            continue;
        }
        check.aligned(l2_offset, cluster_size, "L2 table")?;
        counter.use_range(check, l2_offset, cluster_size, "L2 table", true)?;
        let l2 = check.read(l2_offset, cluster_size, "L2 table")?;
        for (l2_index, chunk) in l2.chunks_exact(8).enumerate() {
            let entry = u64::from_be_bytes(chunk.try_into().expect("8 bytes"));
            if entry & !(1 << 63) == 0 {
                continue;
            }
            let guest = l1_index as u64 * l2_entries + l2_index as u64;
            if guest >= guest_clusters {
                check.error(format!(
                    "L2 table at {l2_offset} maps guest cluster {guest}, beyond the disk's {guest_clusters} clusters"
                ));
                continue;
            }
            if entry & OFLAG_COMPRESSED != 0 {
                let offset = entry & ((1u64 << x) - 1);
                let sectors = ((entry & !(1 << 63) & !OFLAG_COMPRESSED) >> x) + 1;
                let end = (offset & !511) + sectors * 512;
                summary.compressed_clusters += 1;
                // The last sector may run past the end of the file: qemu
                // reads it short and the compressed stream ends before.
                if offset >= check.file_size || end > check.file_size.next_multiple_of(512) {
                    return Err(check.fatal(format!(
                        "Compressed guest cluster {guest} lies at {offset}..{end}, beyond the end of the {}-byte file: the image is truncated",
                        check.file_size
                    )));
                }
                counter.use_range(
                    check,
                    offset,
                    end.min(check.file_size) - offset,
                    "compressed cluster",
                    false,
                )?;
            } else {
                let offset = entry & OFFSET_MASK;
                if entry & 0x1fe != 0 {
                    check.error(format!(
                        "L2 entry of guest cluster {guest} has reserved bits set ({entry:#x})"
                    ));
                }
                if offset == 0 {
                    // A zero cluster (bit 0) or unallocated: nothing stored.
                    if entry & OFLAG_ZERO == 0 {
                        check.error(format!(
                            "L2 entry of guest cluster {guest} is invalid ({entry:#x})"
                        ));
                    }
                    continue;
                }
                summary.plain_clusters += 1;
                check.aligned(offset, cluster_size, "data cluster")?;
                counter.use_range(check, offset, cluster_size, "data cluster", true)?;
            }
        }
    }

    // Compare with the stored refcounts.
    let refcount_bits = 1u64 << header.refcount_order;
    let per_block = cluster_size * 8 / refcount_bits;
    let mut block_cache: Option<(u64, Vec<u8>)> = None;
    let mut refcount_errors = 0u64;
    let total = counter
        .uses
        .len()
        .max(usize::try_from(check.file_size.div_ceil(cluster_size)).unwrap_or(0));
    for cluster in 0..total as u64 {
        let expected = counter.uses.get(cluster as usize).copied().unwrap_or(0);
        let table_index = (cluster / per_block) as usize;
        let stored = match blocks.get(table_index).copied().flatten() {
            None => 0,
            Some(block) => {
                if block_cache.as_ref().is_none_or(|(at, _)| *at != block) {
                    let bytes = check.read(block, cluster_size, "refcount block")?;
                    block_cache = Some((block, bytes));
                }
                let bytes = &block_cache.as_ref().expect("just filled").1;
                refcount_at(bytes, cluster % per_block, refcount_bits)
            }
        };
        if stored < u64::from(expected) {
            refcount_errors += 1;
            if refcount_errors <= 10 {
                check.error(format!(
                    "Cluster {cluster} (offset {}) is used {expected} time(s) but its refcount is {stored}",
                    cluster * cluster_size
                ));
            }
        } else if stored > u64::from(expected) && expected == 0 {
            summary.leaked_clusters += 1;
        } else if stored > u64::from(expected) {
            // Counted more than used: only space is lost, as for a leak.
            summary.leaked_clusters += 1;
        }
    }
    if refcount_errors > 10 {
        check.error(format!(
            "{} more clusters have a refcount below their use",
            refcount_errors - 10
        ));
    }
    if summary.leaked_clusters > 0 {
        check.findings.push(Finding {
            severity: Severity::Warning,
            message: format!(
                "{} leaked clusters: counted but unused, which wastes space only",
                summary.leaked_clusters
            ),
        });
    }
    Ok(())
}

/// The `index`th refcount of `refcount_bits` bits in a big-endian block.
fn refcount_at(block: &[u8], index: u64, refcount_bits: u64) -> u64 {
    let bit = index * refcount_bits;
    if refcount_bits >= 8 {
        let bytes = (refcount_bits / 8) as usize;
        let start = (bit / 8) as usize;
        block[start..start + bytes]
            .iter()
            .fold(0, |acc, b| (acc << 8) | u64::from(*b))
    } else {
        // Sub-byte refcounts are stored from the least significant bit.
        let byte = block[(bit / 8) as usize];
        u64::from(byte >> (bit % 8)) & ((1 << refcount_bits) - 1)
    }
}

fn header_extensions<R: ReadAt + ?Sized>(
    check: &mut Check<'_, R>,
    header: &Header,
    cluster_size: u64,
) -> Result<(), Fatal> {
    let mut at = u64::from(header.header_length);
    let end = cluster_size.min(check.file_size);
    while at + 8 <= end {
        let b = check.read(at, 8, "header extension")?;
        let kind = be32(&b, 0);
        let len = u64::from(be32(&b, 4));
        match kind {
            EXT_END => return Ok(()),
            EXT_DATA_FILE => check
                .error("The image names an external data file: it is not self-contained".into()),
            EXT_BITMAPS => {
                return Err(check.fatal(
                    "The image holds persistent dirty bitmaps: verify cannot check them; remove them with qemu-img bitmap --remove".into(),
                ));
            }
            EXT_CRYPTO => {
                return Err(check
                    .fatal("The image is encrypted: verify cannot check encrypted images".into()));
            }
            _ => {}
        }
        at += 8 + len.next_multiple_of(8);
    }
    if at < end {
        return Err(check.fatal(
            "The header extensions run past the first cluster: the header is corrupt".into(),
        ));
    }
    Ok(())
}

impl<R: ReadAt + ?Sized> Check<'_, R> {
    fn aligned(&mut self, offset: u64, cluster_size: u64, what: &str) -> Result<(), Fatal> {
        if offset % cluster_size != 0 {
            return Err(self.fatal(format!(
                "The {what} at offset {offset} is not aligned to the {cluster_size}-byte cluster size"
            )));
        }
        Ok(())
    }
}

/// How many times each host cluster is used by the structure.
struct Counter {
    cluster_size: u64,
    uses: Vec<u32>,
    /// A cluster used by metadata or as a plain data cluster may be used
    /// once only; compressed clusters may share host clusters.
    exclusive: Vec<bool>,
}

impl Counter {
    fn new(file_size: u64, cluster_size: u64) -> Counter {
        let clusters = usize::try_from(file_size.div_ceil(cluster_size)).unwrap_or(0);
        Counter {
            cluster_size,
            uses: vec![0; clusters],
            exclusive: vec![false; clusters],
        }
    }

    /// Counts the clusters of `offset..offset+len` once each, after checking
    /// that they lie inside the file.
    fn use_range<R: ReadAt + ?Sized>(
        &mut self,
        check: &mut Check<'_, R>,
        offset: u64,
        len: u64,
        what: &str,
        exclusive: bool,
    ) -> Result<(), Fatal> {
        let end = offset.checked_add(len).ok_or(Fatal)?;
        if end > check.file_size {
            return Err(check.fatal(format!(
                "The {what} at {offset}..{end} lies beyond the end of the {}-byte file: the image is truncated",
                check.file_size
            )));
        }
        let first = offset / self.cluster_size;
        let last = (end - 1) / self.cluster_size;
        for cluster in first..=last {
            let i = cluster as usize;
            let shared = self.uses[i] > 0 && (exclusive || self.exclusive[i]);
            self.uses[i] = self.uses[i].saturating_add(1);
            self.exclusive[i] |= exclusive;
            if shared {
                check.error(format!(
                    "Cluster {cluster} (offset {}) is used twice: the {what} overlaps other data",
                    cluster * self.cluster_size
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid image: header, refcount table, one refcount block,
    /// L1 table, one L2 table, one plain data cluster; 512-byte clusters.
    fn tiny() -> Vec<u8> {
        let cs = 512usize;
        let mut img = vec![0u8; cs * 6];
        img[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        img[4..8].copy_from_slice(&3u32.to_be_bytes());
        img[20..24].copy_from_slice(&9u32.to_be_bytes());
        img[24..32].copy_from_slice(&(64u64 * 512).to_be_bytes());
        img[36..40].copy_from_slice(&1u32.to_be_bytes());
        img[40..48].copy_from_slice(&(3u64 * 512).to_be_bytes()); // L1
        img[48..56].copy_from_slice(&(512u64).to_be_bytes()); // refcount table
        img[56..60].copy_from_slice(&1u32.to_be_bytes());
        img[96..100].copy_from_slice(&4u32.to_be_bytes());
        img[100..104].copy_from_slice(&104u32.to_be_bytes());
        img[512..520].copy_from_slice(&(1024u64).to_be_bytes()); // block at 2
        for cluster in 0..6 {
            img[1024 + cluster * 2 + 1] = 1;
        }
        img[1536..1544].copy_from_slice(&((4u64 * 512) | (1 << 63)).to_be_bytes());
        img[2048..2056].copy_from_slice(&((5u64 * 512) | (1 << 63)).to_be_bytes());
        img
    }

    fn errors(summary: &Qcow2Summary) -> Vec<&str> {
        summary
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .map(|f| f.message.as_str())
            .collect()
    }

    #[test]
    fn valid_image_has_no_findings() {
        let img = tiny();
        let summary = check(img.as_slice(), img.len() as u64);
        assert_eq!(summary.findings, vec![]);
        assert_eq!(summary.plain_clusters, 1);
        assert_eq!(summary.virtual_size, 64 * 512);
    }

    #[test]
    fn zero_refcount_of_used_cluster_is_an_error() {
        let mut img = tiny();
        img[1024 + 5 * 2 + 1] = 0;
        let summary = check(img.as_slice(), img.len() as u64);
        let errors = errors(&summary);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("Cluster 5"), "{errors:?}");
    }

    #[test]
    fn leak_is_a_warning() {
        let mut img = tiny();
        img.extend_from_slice(&[0; 512]);
        img[1024 + 6 * 2 + 1] = 1;
        let summary = check(img.as_slice(), img.len() as u64);
        assert!(errors(&summary).is_empty());
        assert_eq!(summary.leaked_clusters, 1);
        assert_eq!(summary.findings[0].severity, Severity::Warning);
    }

    #[test]
    fn doubly_used_cluster_is_an_error() {
        let mut img = tiny();
        // The data cluster points at the L1 table's cluster.
        img[2048..2056].copy_from_slice(&(3u64 * 512).to_be_bytes());
        let summary = check(img.as_slice(), img.len() as u64);
        assert!(
            errors(&summary).iter().any(|e| e.contains("used twice")),
            "{:?}",
            summary.findings
        );
    }

    #[test]
    fn truncation_backing_file_and_unknown_bits() {
        let img = tiny();
        let summary = check(&img[..2560], 2560);
        assert!(errors(&summary)[0].contains("truncated"));

        let mut img = tiny();
        img[8..16].copy_from_slice(&200u64.to_be_bytes());
        img[16..20].copy_from_slice(&4u32.to_be_bytes());
        img[200..204].copy_from_slice(b"base");
        let summary = check(img.as_slice(), img.len() as u64);
        assert!(errors(&summary)[0].contains("backing file (\"base\")"));

        let mut img = tiny();
        img[72..80].copy_from_slice(&(1u64 << 9).to_be_bytes());
        let summary = check(img.as_slice(), img.len() as u64);
        assert!(errors(&summary)[0].contains("unknown incompatible feature bits 0x200"));
    }

    #[test]
    fn compressed_descriptors() {
        // 512-byte clusters: x = 62 - 1 = 61, bit 61 counts one extra sector.
        let x = 61;
        let mut img = tiny();
        let inside = OFLAG_COMPRESSED | (5 * 512 + 100);
        img[2048..2056].copy_from_slice(&inside.to_be_bytes());
        let summary = check(img.as_slice(), img.len() as u64);
        assert_eq!(summary.findings, vec![]);
        assert_eq!(summary.compressed_clusters, 1);

        // Past the end of the file: truncated.
        let beyond = OFLAG_COMPRESSED | (7 * 512);
        img[2048..2056].copy_from_slice(&beyond.to_be_bytes());
        let summary = check(img.as_slice(), img.len() as u64);
        assert!(errors(&summary)[0].starts_with("Compressed guest cluster 0 lies at 3584..4096"));

        // The last cluster with one extra sector runs 512 bytes past the end.
        let long = OFLAG_COMPRESSED | (1 << x) | (5 * 512);
        img[2048..2056].copy_from_slice(&long.to_be_bytes());
        let summary = check(img.as_slice(), img.len() as u64);
        assert!(
            errors(&summary)[0].contains("truncated"),
            "{:?}",
            summary.findings
        );
    }

    #[test]
    fn sub_byte_refcounts() {
        assert_eq!(refcount_at(&[0b0110_0001], 0, 1), 1);
        assert_eq!(refcount_at(&[0b0110_0001], 5, 1), 1);
        assert_eq!(refcount_at(&[0b0110_0001], 1, 2), 0);
        assert_eq!(refcount_at(&[0x12, 0x34], 0, 16), 0x1234);
    }
}
