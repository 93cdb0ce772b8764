//! Imaging engine of ironic-snapshot.
//!
//! Turns a disk (block device or regular file), opened read-only, into a disk
//! image streamed to a sink: a file, standard output, or a [`Sink`] of another
//! crate (the Glance upload lives in `snapshot-openstack`).
//! The pipeline is: find extents that may hold data, read them, drop all-zero
//! clusters, compress the rest on every core, lay the result out as qcow2 (or
//! raw) in one ordered writer, and digest the emitted bytes on the way out.
//!
//! This crate knows nothing of Python, command lines or OpenStack: the PyO3
//! binding (`snapshot-py`) and the CLI (`snapshot-cli`) are thin layers over
//! [`capture`], and `snapshot-openstack` runs [`capture_with`] into its
//! Glance sink. It logs through `tracing` and reports progress through the
//! [`Progress`] trait so that each front end renders it its own way.
//!
//! The public API is what those front ends use, re-exported here; the
//! modules behind it are private so that the engine's insides (pipeline,
//! qcow2 layout, write strategies) can change without breaking them. Two
//! modules stay public as a whole: [`provenance`],
//! whose builder the CLI and the binding share (its `Source` is not the
//! disk's), and [`fs`], the free-space planner, which the `plan` example
//! measures on its own (tests/bench).

#![deny(missing_docs)]

mod capture;
mod digest;
mod error;
pub mod fs;
mod options;
mod pipeline;
mod progress;
pub mod provenance;
mod qcow2;
mod qcow2_check;
mod report;
mod sink;
mod size;
mod source;
mod verify;

pub use capture::{capture, capture_into, capture_with, check_options};
pub use digest::Digests;
pub use error::{Error, ErrorKind, Result};
pub use options::{CaptureOptions, Compression, Format, Secret, Target};
pub use progress::{NoProgress, Phase, Progress, ProgressUpdate};
pub use qcow2_check::ReadAt as ImageReadAt;
pub use report::{ClusterCounts, Report};
pub use sink::{PendingFile, Sink, remove_partial_outputs};
pub use size::{auto_memory_limit, format_size, parse_memory_limit, parse_size};
pub use source::{Source, check_output};
pub use verify::{Expected, Verification, glance_expectations, verify_file, verify_image};

/// Version of the engine, recorded in every report.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
