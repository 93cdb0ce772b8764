//! Imaging engine of ironic-snapshot.
//!
//! Turns a disk (block device or regular file), opened read-only, into a disk
//! image streamed to a sink: a file, standard output or an HTTP PUT (Glance).
//! The pipeline is: find extents that may hold data, read them, drop all-zero
//! clusters, compress the rest on every core, lay the result out as qcow2 (or
//! raw) in one ordered writer, and digest the emitted bytes on the way out.
//!
//! This crate knows nothing of Python or of command lines: the PyO3 binding
//! (`snapshot-py`) and the CLI (`snapshot-cli`) are thin layers over
//! [`capture`]. It logs through `tracing` and reports progress through the
//! [`Progress`] trait so that each front end renders it its own way.

pub mod capture;
pub mod digest;
pub mod error;
pub mod fs;
pub mod keystone;
pub mod options;
mod pipeline;
pub mod progress;
pub mod provenance;
pub mod qcow2;
pub mod qcow2_check;
pub mod report;
pub mod sink;
pub mod size;
pub mod source;
pub mod verify;

pub use capture::{capture, capture_into, check_options};
pub use error::{Error, Result};
pub use options::{CaptureOptions, Compression, Format, Target};
pub use progress::{NoProgress, Progress, ProgressUpdate};
pub use report::Report;
pub use sink::{PendingFile, remove_partial_outputs};
pub use size::{auto_memory_limit, format_size, parse_memory_limit, parse_size};
pub use verify::{Expected, Verification, glance_expectations, verify_file, verify_image};

/// Version of the engine, recorded in every report.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
