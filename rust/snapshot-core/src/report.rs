//! What a capture reports: sizes, digests of the emitted bytes, timings.

use crate::fs::PartitionReport;
use crate::options::{Compression, Format};

/// The result of a successful capture. Serialised as the CLI's `--json`
/// output and returned to Python as a dict; field names are part of the
/// interface.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    /// Size of the disk as a guest sees it, in bytes.
    pub virtual_size: u64,
    /// Size of the emitted image, in bytes.
    pub image_size: u64,
    /// Bytes read from the source (all passes).
    pub bytes_read: u64,
    /// SHA-256 of the emitted image bytes, lowercase hex.
    pub sha256: String,
    /// SHA-512 of the emitted image bytes, lowercase hex (Glance `os_hash_value`).
    pub sha512: String,
    /// MD5 of the emitted image bytes, lowercase hex (Glance `checksum`).
    pub md5: String,
    /// Wall-clock seconds of the whole capture.
    pub seconds: f64,
    /// Image format.
    pub format: Format,
    /// Cluster compression.
    pub compression: Compression,
    /// Compression level used.
    pub level: i32,
    /// qcow2 cluster size in bytes.
    pub cluster_size: u32,
    /// Passes over the source: 1, or 2 when a forward-only sink's spool overflowed.
    pub passes: u32,
    /// Clusters in the image by how they were stored.
    pub clusters: ClusterCounts,
    /// Where the image went, without secrets: a path, `-`, or `glance:ID`.
    pub target: String,
    /// Version of the engine.
    pub tool_version: String,
    /// How each partition was read when free space was skipped; empty when
    /// the whole disk was read (no plan, or no partition table found).
    pub partitions: Vec<PartitionReport>,
}

/// Cluster counts by how each guest cluster was stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClusterCounts {
    /// Clusters that were holes or all zeros: not stored.
    pub zero: u64,
    /// Clusters stored compressed.
    pub compressed: u64,
    /// Clusters stored plain (incompressible, or compression `none`).
    pub plain: u64,
}
