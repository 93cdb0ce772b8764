//! Filesystem-aware capture: which byte ranges of a disk carry data.
//!
//! Reads partition tables and filesystem metadata straight from the source
//! (never mounting it) to find free space and swap contents, which need not
//! be copied: they read as zeros in the image. Any parse error or
//! inconsistency falls back to copying the affected area whole.
//!
//! What is kept whole, always: everything outside partitions (the first MiB,
//! boot code, both GPT copies, extended boot records and gaps), every
//! partition-table sector even inside another partition, EFI system,
//! BIOS boot and PReP partitions, and every partition whose content is not
//! understood or not trustworthy (journal to replay, dirty log, failed
//! checksum, counts that disagree). ext2/3/4 and XFS keep their allocated
//! blocks and all metadata (less what no reader ever looks at: ext inode
//! table tails past `bg_itable_unused` and an empty journal); swap keeps its
//! header page. Planning reads only superblocks, descriptors, bitmaps, btree
//! blocks, a few log sectors and, to cross-check the ext bitmaps, the inode
//! table blocks holding in-use inodes and their block maps and extent trees:
//! well under a MiB per 64 GiB of empty ext4, about 2 MiB for a Debian root.

// One whole range in a Vec is what a plan often is, not a mistake.
#![allow(clippy::single_range_in_vec_init)]

mod crc;
mod ext;
mod swap;
mod table;
#[cfg(test)]
mod tests;
mod xfs;

use std::ops::Range;

/// How one partition (or the whole disk) was handled.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionReport {
    /// Partition number as the table numbers it (1-based); 0 for the whole disk.
    pub number: u32,
    /// First byte of the partition on the disk.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the content was recognised as (`ext4`, `xfs`, `swap`, `unknown`,
    /// `ambiguous` for two signatures at once, ...).
    pub content: String,
    /// How it was captured: `allocated-only`, `header-only` or `whole`.
    pub handling: String,
    /// Why it was captured whole, when it was (`journal needs recovery`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Bytes the filesystem reports in use (allocated blocks plus metadata), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_used: Option<u64>,
    /// Bytes of this partition the capture reads.
    pub bytes_to_read: u64,
}

/// The parts of a disk worth reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    /// Sorted, non-overlapping byte ranges to read; everything else reads as zeros.
    pub ranges: Vec<Range<u64>>,
    /// One entry per partition found, in disk order.
    pub partitions: Vec<PartitionReport>,
}

impl DiskPlan {
    /// A plan that reads all of a disk of `size` bytes, with no partition report.
    pub fn whole(size: u64) -> DiskPlan {
        DiskPlan {
            ranges: if size > 0 { vec![0..size] } else { Vec::new() },
            partitions: Vec::new(),
        }
    }

    /// Total bytes the plan reads.
    pub fn bytes_to_read(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }

    /// Whether any planned byte falls in `span`: a cluster for which this is
    /// false need not be read at all (it is all zeros in the image).
    pub fn overlaps(&self, span: Range<u64>) -> bool {
        let first = self.ranges.partition_point(|r| r.end <= span.start);
        self.ranges.get(first).is_some_and(|r| r.start < span.end)
    }

    /// Zeroes the bytes of `buf`, read from disk offset `offset`, that the
    /// plan does not read: ranges are block-granular (512 bytes to 64 KiB),
    /// finer than an image cluster, so a cluster read whole is masked with this.
    pub fn zero_unplanned(&self, offset: u64, buf: &mut [u8]) {
        let end = offset + buf.len() as u64;
        let mut cursor = offset;
        let first = self.ranges.partition_point(|r| r.end <= offset);
        for r in self.ranges[first..].iter().take_while(|r| r.start < end) {
            if r.start > cursor {
                buf[(cursor - offset) as usize..(r.start - offset) as usize].fill(0);
            }
            cursor = cursor.max(r.end);
        }
        if cursor < end {
            buf[(cursor - offset) as usize..].fill(0);
        }
    }
}

/// Reads from a disk at absolute offsets. Implemented for [`std::fs::File`].
pub trait ReadAt {
    /// Fills `buf` from `offset`; a short read means the disk ended.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize>;
}

impl ReadAt for std::fs::File {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }
}

/// An in-memory disk, for tests and small images.
impl ReadAt for Vec<u8> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        let Some(rest) = self.get(start..) else {
            return Ok(0);
        };
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        Ok(n)
    }
}

/// Handling names, as the report spells them.
pub(crate) const ALLOCATED_ONLY: &str = "allocated-only";
/// Only the header (swap signature page) is kept.
pub(crate) const HEADER_ONLY: &str = "header-only";
/// The whole partition is read.
pub(crate) const WHOLE: &str = "whole";

/// The first MiB holds the MBR, the primary GPT and often boot loader code
/// (GRUB core image in the MBR gap): always read it.
const BOOT_AREA: u64 = 1 << 20;

/// Why a parser gave up; becomes the report's `reason`.
pub(crate) type Reason = String;

/// What a filesystem parser found inside one partition.
#[derive(Debug)]
pub(crate) struct Allocation {
    /// Ranges to read, relative to the partition start, in any order.
    pub ranges: Vec<Range<u64>>,
    /// Bytes in use according to the filesystem's own metadata.
    pub bytes_used: Option<u64>,
    /// `allocated-only` or `header-only`.
    pub handling: &'static str,
}

/// A recognised content signature and, when the parser could trust it, what to read.
#[derive(Debug)]
pub(crate) struct Probe {
    /// Content name for the report (`ext4`, `xfs`, `swap`).
    pub content: String,
    /// What to read, or why everything must be read.
    pub result: Result<Allocation, Reason>,
}

/// A view of a part of the disk, addressed from its own start.
pub(crate) struct Slice<'a> {
    disk: &'a dyn ReadAt,
    start: u64,
    size: u64,
}

impl<'a> Slice<'a> {
    pub(crate) fn new(disk: &'a dyn ReadAt, start: u64, size: u64) -> Self {
        Slice { disk, start, size }
    }

    /// Length of the view in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Reads exactly `len` bytes at `offset` of the view, or says why not.
    pub(crate) fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, Reason> {
        let end = offset
            .checked_add(len as u64)
            .filter(|&end| end <= self.size)
            .ok_or_else(|| format!("metadata at byte {offset} lies beyond the partition end"))?;
        let _ = end;
        let mut buf = vec![0u8; len];
        read_full(self.disk, self.start + offset, &mut buf)?;
        Ok(buf)
    }
}

/// Fills `buf` at `offset`, looping over short reads; a disk end or an I/O
/// error is a reason to fall back.
pub(crate) fn read_full(disk: &dyn ReadAt, offset: u64, buf: &mut [u8]) -> Result<(), Reason> {
    let mut done = 0;
    while done < buf.len() {
        match disk.read_at(offset + done as u64, &mut buf[done..]) {
            Ok(0) => {
                return Err(format!(
                    "disk ends before byte {}",
                    offset + buf.len() as u64
                ));
            }
            Ok(n) => done += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => {
                return Err(format!(
                    "read error at byte {}: {err}",
                    offset + done as u64
                ));
            }
        }
    }
    Ok(())
}

/// Little- and big-endian field readers that never panic: a field outside
/// the buffer reads as an error, which callers turn into a whole copy.
pub(crate) mod field {
    use super::Reason;

    fn bytes<const N: usize>(buf: &[u8], off: usize) -> Result<[u8; N], Reason> {
        buf.get(off..off.saturating_add(N))
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| format!("field at offset {off} outside its {} byte block", buf.len()))
    }
    pub(crate) fn le16(buf: &[u8], off: usize) -> Result<u16, Reason> {
        bytes(buf, off).map(u16::from_le_bytes)
    }
    pub(crate) fn le32(buf: &[u8], off: usize) -> Result<u32, Reason> {
        bytes(buf, off).map(u32::from_le_bytes)
    }
    pub(crate) fn le64(buf: &[u8], off: usize) -> Result<u64, Reason> {
        bytes(buf, off).map(u64::from_le_bytes)
    }
    pub(crate) fn be16(buf: &[u8], off: usize) -> Result<u16, Reason> {
        bytes(buf, off).map(u16::from_be_bytes)
    }
    pub(crate) fn be32(buf: &[u8], off: usize) -> Result<u32, Reason> {
        bytes(buf, off).map(u32::from_be_bytes)
    }
    pub(crate) fn be64(buf: &[u8], off: usize) -> Result<u64, Reason> {
        bytes(buf, off).map(u64::from_be_bytes)
    }
}

/// Sorts `ranges`, drops empty ones, clips them to `0..limit` and merges
/// overlapping or touching ones.
pub(crate) fn normalize(ranges: &mut Vec<Range<u64>>, limit: u64) {
    for r in ranges.iter_mut() {
        r.end = r.end.min(limit);
    }
    ranges.retain(|r| r.start < r.end);
    ranges.sort_unstable_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges.drain(..) {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    *ranges = merged;
}

/// The parts of sorted, merged `ranges` outside sorted, merged `holes`.
pub(crate) fn subtract(ranges: &[Range<u64>], holes: &[Range<u64>]) -> Vec<Range<u64>> {
    let mut out = Vec::with_capacity(ranges.len());
    let mut h = 0;
    for r in ranges {
        let mut start = r.start;
        while h < holes.len() && holes[h].end <= start {
            h += 1;
        }
        let mut k = h;
        while k < holes.len() && holes[k].start < r.end {
            if holes[k].start > start {
                out.push(start..holes[k].start);
            }
            start = start.max(holes[k].end);
            k += 1;
        }
        if start < r.end {
            out.push(start..r.end);
        }
    }
    out
}

/// Works out which ranges of a disk of `size` bytes to read.
///
/// Never fails: whatever cannot be understood is planned whole.
pub fn plan(disk: &dyn ReadAt, size: u64) -> DiskPlan {
    plan_with(disk, size, PlanOptions::default())
}

/// Settings of the planner; the defaults are what a capture uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOptions {
    /// Cross-check allocation bitmaps and free-space btrees against the
    /// inodes and other btrees before trusting them. Turned off only to
    /// measure what the check costs: without it a bitmap that lies
    /// consistently loses data.
    pub cross_check: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions { cross_check: true }
    }
}

thread_local! {
    /// The options of the plan running on this thread: the parsers read
    /// them here rather than through every probe's signature.
    static CROSS_CHECK: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// Whether the plan running on this thread cross-checks what it trusts.
pub(crate) fn cross_check_enabled() -> bool {
    CROSS_CHECK.get()
}

/// [`plan`] with explicit settings.
pub fn plan_with(disk: &dyn ReadAt, size: u64, options: PlanOptions) -> DiskPlan {
    /// Restores the default when the plan ends, even by unwinding.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CROSS_CHECK.set(true);
        }
    }
    CROSS_CHECK.set(options.cross_check);
    let _reset = Reset;
    // The parsers are written not to panic (checked arithmetic, bounded
    // slices); this is a second line of defence for unwinding builds.
    let planned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| plan_disk(disk, size)));
    let plan = planned.unwrap_or_else(|_| {
        tracing::error!("Free-space planner panicked; reading the whole disk");
        whole_disk(size, "internal error in the free-space planner".into())
    });
    tracing::debug!(
        ranges = plan.ranges.len(),
        bytes_to_read = plan.bytes_to_read(),
        size,
        "Free-space plan"
    );
    plan
}

/// A plan that reads everything, with one report entry saying why.
fn whole_disk(size: u64, reason: Reason) -> DiskPlan {
    DiskPlan {
        ranges: if size > 0 { vec![0..size] } else { Vec::new() },
        partitions: vec![PartitionReport {
            number: 0,
            start: 0,
            size,
            content: "unknown".into(),
            handling: WHOLE.into(),
            reason: Some(reason),
            bytes_used: None,
            bytes_to_read: size,
        }],
    }
}

fn plan_disk(disk: &dyn ReadAt, size: u64) -> DiskPlan {
    let parts = match table::read(disk, size) {
        Ok(Some(layout)) => layout,
        Ok(None) => {
            // No partition table: the disk may hold a filesystem directly.
            let (report, mut ranges) = plan_partition(disk, 0, 0, size, table::Role::Data);
            if report.content == "unknown" {
                return whole_disk(size, "no partition table and no known filesystem".into());
            }
            ranges.push(0..BOOT_AREA.min(size));
            normalize(&mut ranges, size);
            return DiskPlan {
                ranges,
                partitions: vec![report],
            };
        }
        Err(reason) => return whole_disk(size, reason),
    };

    // Start from everything outside partitions, then add what each partition needs.
    let mut ranges = Vec::new();
    let mut cursor = 0;
    for p in &parts.partitions {
        if p.start > cursor {
            ranges.push(cursor..p.start);
        }
        cursor = cursor.max(p.start + p.size);
    }
    if cursor < size {
        ranges.push(cursor..size);
    }
    ranges.push(0..BOOT_AREA.min(size));
    ranges.extend(parts.tables.iter().cloned());

    let mut reports = Vec::with_capacity(parts.partitions.len());
    for p in &parts.partitions {
        let (report, part_ranges) = plan_partition(disk, p.number, p.start, p.size, p.role);
        ranges.extend(part_ranges);
        reports.push(report);
    }
    normalize(&mut ranges, size);
    // Report what is really read of each partition, boot area included.
    for report in &mut reports {
        report.bytes_to_read = overlap(&ranges, report.start..report.start + report.size);
    }
    DiskPlan {
        ranges,
        partitions: reports,
    }
}

/// Bytes of sorted, merged `ranges` that fall in `span`.
fn overlap(ranges: &[Range<u64>], span: Range<u64>) -> u64 {
    let first = ranges.partition_point(|r| r.end <= span.start);
    ranges[first..]
        .iter()
        .take_while(|r| r.start < span.end)
        .map(|r| r.end.min(span.end) - r.start.max(span.start))
        .sum()
}

/// Plans one partition: returns its report and the absolute ranges to read.
fn plan_partition(
    disk: &dyn ReadAt,
    number: u32,
    start: u64,
    size: u64,
    role: table::Role,
) -> (PartitionReport, Vec<Range<u64>>) {
    let slice = Slice::new(disk, start, size);
    let probe = probe(&slice);
    // No probe: at most one other signature (two would be ambiguous).
    let content = probe.as_ref().map_or_else(
        || {
            other_signatures(&slice)
                .first()
                .map_or("unknown", |n| n)
                .into()
        },
        |p| p.content.clone(),
    );
    let result = match (role.keep_whole(), probe) {
        (Some(why), _) => Err(why.to_string()),
        (None, Some(p)) => p.result,
        (None, None) => Err("content not understood".to_string()),
    };
    let mut report = PartitionReport {
        number,
        start,
        size,
        content,
        handling: WHOLE.into(),
        reason: None,
        bytes_used: None,
        bytes_to_read: size,
    };
    match result {
        Ok(alloc) => {
            let mut ranges = alloc.ranges;
            normalize(&mut ranges, size);
            report.handling = alloc.handling.into();
            report.bytes_used = alloc.bytes_used;
            report.bytes_to_read = ranges.iter().map(|r| r.end - r.start).sum();
            let absolute = ranges
                .into_iter()
                .map(|r| r.start + start..r.end + start)
                .collect();
            (report, absolute)
        }
        Err(reason) => {
            tracing::info!(partition = number, content = %report.content, %reason, "Reading partition whole");
            report.reason = Some(reason);
            (report, vec![start..start + size])
        }
    }
}

/// Recognises the contents the planner can shrink.
///
/// Every prober runs, as blkid's do: two signatures at once (a leftover
/// swap signature in an ext4, an old superblock beside a new one) are
/// ambiguous, and the partition is read whole rather than planned by
/// whichever parser asked first.
fn probe(slice: &Slice<'_>) -> Option<Probe> {
    let mut found: Vec<Probe> = [swap::probe, ext::probe, xfs::probe]
        .into_iter()
        .filter_map(|probe| probe(slice))
        .collect();
    let mut names: Vec<String> = found.iter().map(|p| p.content.clone()).collect();
    names.extend(other_signatures(slice).into_iter().map(String::from));
    if names.len() > 1 {
        return Some(Probe {
            content: AMBIGUOUS.into(),
            result: Err(format!(
                "signatures of {} at once: ambiguous, as blkid reports it",
                names.join(" and ")
            )),
        });
    }
    found.pop()
}

/// Content name of a partition carrying more than one signature.
const AMBIGUOUS: &str = "ambiguous";

/// Signatures of contents the planner does not shrink, as blkid names them:
/// the report names what was recognised.
fn other_signatures(slice: &Slice<'_>) -> Vec<&'static str> {
    let head = slice
        .read(0, 4096.min(slice.size() as usize))
        .unwrap_or_default();
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    let mut names = Vec::new();
    if at(0x200, b"LABELONE") || at(0x218, b"LVM2 001") {
        names.push("LVM2_member");
    }
    if at(0, b"LUKS\xba\xbe") {
        names.push("crypto_LUKS");
    }
    if at(3, b"NTFS    ") {
        names.push("ntfs");
    }
    if at(0x52, b"FAT32   ") || at(0x36, b"FAT16   ") || at(0x36, b"FAT12   ") {
        names.push("vfat");
    }
    if slice.read(0x10040, 8).is_ok_and(|m| m == b"_BHRfS_M") {
        names.push("btrfs");
    }
    names
}
