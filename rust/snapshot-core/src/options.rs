//! What a capture should produce and where it should go.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Image format to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// qcow2 version 3, compressed per cluster.
    #[default]
    Qcow2,
    /// A plain disk image, byte for byte (sparse when written to a file).
    Raw,
}

/// Compression of qcow2 clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// One zstd frame per cluster (qcow2 `compression_type` = zstd, qemu 5.1+).
    #[default]
    Zstd,
    /// Raw deflate, window bits -12: readable by every qcow2 consumer.
    Zlib,
    /// No compression: zero clusters are still skipped.
    None,
}

impl Compression {
    /// Default level for this compression when none is given.
    pub fn default_level(self) -> i32 {
        match self {
            Compression::Zstd => 3,
            Compression::Zlib => 6,
            Compression::None => 0,
        }
    }
}

/// A secret string (token, password) that never appears in `Debug` output,
/// logs or reports.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value, for putting into a request header and nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where the image goes, among the engine's own sinks (a Glance image is
/// `snapshot-openstack`'s, through [`crate::capture_with`]).
#[derive(Debug, Clone)]
pub enum Target {
    /// A file on a local filesystem (seekable: one pass).
    File {
        /// Path of the file to create.
        path: PathBuf,
        /// Overwrite an existing file.
        force: bool,
    },
    /// Standard output (forward-only).
    Stdout,
}

impl Target {
    /// Where the image goes, for logs and the report, without secrets: the
    /// file's path, or `-` for standard output.
    pub fn describe(&self) -> String {
        match self {
            Target::File { path, .. } => path.display().to_string(),
            Target::Stdout => "-".to_owned(),
        }
    }
}

/// How to capture.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// Image format.
    pub format: Format,
    /// Cluster compression (qcow2 only).
    pub compression: Compression,
    /// Compression level; `None` means [`Compression::default_level`].
    pub level: Option<i32>,
    /// qcow2 cluster size in bytes: a power of two from 64 KiB to 2 MiB.
    pub cluster_size: u32,
    /// Compression workers; 0 means one per available core.
    pub threads: usize,
    /// Most bytes of memory a qcow2 capture to a forward-only sink (standard
    /// output, Glance) holds: the image's metadata (L2 tables, reference
    /// counts and a CRC-32 per cluster read, bounded from the disk before
    /// it is read), the buffers of the workers, the emitter and the sink,
    /// and in what is left the compressed data, spooled until the header
    /// can go first. Data that does not fit makes the capture read the
    /// source a second time. A limit below the metadata is refused with the
    /// minimum; one below the metadata plus the buffers reads twice and
    /// exceeds the limit by at most the buffers (a few MiB per thread). A
    /// seekable file needs no spool and is not bound by it.
    pub memory_limit: u64,
    /// Skip free space of known filesystems and swap areas.
    pub skip_free_space: bool,
    /// Set to `true` from another thread to stop the capture; the engine then
    /// removes what it wrote and returns [`crate::Error::Cancelled`].
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            format: Format::Qcow2,
            compression: Compression::Zstd,
            level: None,
            cluster_size: 64 * 1024,
            threads: 0,
            memory_limit: 256 * 1024 * 1024,
            skip_free_space: true,
            cancel: None,
        }
    }
}
