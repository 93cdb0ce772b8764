//! Filesystem-aware capture: which byte ranges of a disk carry data.
//!
//! Reads partition tables and filesystem metadata straight from the source
//! (never mounting it) to find free space and swap contents, which need not
//! be copied: they read as zeros in the image. Any parse error or
//! inconsistency falls back to copying the affected area whole.

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
    /// What the content was recognised as (`ext4`, `xfs`, `swap`, `unknown`, ...).
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

/// Works out which ranges of a disk of `size` bytes to read.
///
/// Never fails: whatever cannot be understood is planned whole.
pub fn plan(_disk: &dyn ReadAt, size: u64) -> DiskPlan {
    // Filesystem awareness is not built yet: read the whole disk.
    DiskPlan {
        ranges: vec![0..size],
        partitions: Vec::new(),
    }
}
