//! The engine's one error type.
//!
//! Every variant names what went wrong and, in its message, what the user can
//! do about it. Messages start with a capital letter and carry no trailing
//! period; an underlying cause is attached as `source`, never pasted into the
//! text, so front ends can render the chain as they like. The binding maps
//! [`Error::kind`] to a Python exception class and the CLI maps it to an exit
//! code, so adding a variant means giving it a kind.

use std::io;
use std::path::PathBuf;

/// Result type of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Coarse class of an [`Error`], stable across versions: front ends map it to
/// exception classes and exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Bad option or argument values; nothing was read or written.
    InvalidInput,
    /// The source could not be opened or read.
    Source,
    /// The output could not be created or written.
    Output,
    /// The remote image service refused or broke the upload.
    Upload,
    /// The image was written but its digests do not match what storage reports.
    Verification,
    /// The capture was cancelled by the caller.
    Cancelled,
    /// A bug or an impossible state; please report it.
    Internal,
}

/// What can go wrong during a capture.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A size string could not be parsed.
    #[error(
        "Invalid size {value:?}: use a number with an optional K, M, G or T suffix, such as 64K or 1G"
    )]
    InvalidSize {
        /// The text that was given.
        value: String,
    },
    /// An option value is out of range or combinations conflict.
    #[error("Invalid option {option}: {reason}")]
    InvalidOption {
        /// Name of the option, as the user spells it (`--cluster-size`).
        option: &'static str,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// The source path does not exist.
    #[error("Source {path} does not exist: give the path of a block device or disk image file")]
    SourceNotFound {
        /// The path that was given.
        path: PathBuf,
    },
    /// The source exists but cannot be opened for reading.
    #[error(
        "Cannot open source {path} for reading: check the path and that you may read it (block devices usually need root)"
    )]
    SourceOpen {
        /// The path that was given.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The source is neither a block device nor a regular file.
    #[error("Source {path} is not a block device or a regular file")]
    SourceNotADisk {
        /// The path that was given.
        path: PathBuf,
    },
    /// Reading the source failed.
    #[error(
        "Reading source {path} at offset {offset} failed: the disk may be failing or was removed"
    )]
    SourceRead {
        /// The source path.
        path: PathBuf,
        /// Byte offset of the failed read.
        offset: u64,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The source ended before its reported size.
    #[error(
        "Source {path} ended at offset {offset}, before its size of {size} bytes: was it truncated or removed during the capture?"
    )]
    ShortRead {
        /// The source path.
        path: PathBuf,
        /// Where the data ended.
        offset: u64,
        /// The size the source reported when opened.
        size: u64,
    },
    /// A second pass over the source produced different data than the first.
    #[error(
        "Source {path} changed during the capture: capture an unmounted disk, or one that nothing writes to"
    )]
    SourceChanged {
        /// The source path.
        path: PathBuf,
    },
    /// The output file exists and overwriting was not asked for.
    #[error("Output {path} already exists: remove it or pass --force to overwrite it")]
    OutputExists {
        /// The output path.
        path: PathBuf,
    },
    /// Writing the output would change the disk being captured.
    #[error(
        "Output {output} {why} ({source_path}): write it to another disk, to standard output or to Glance"
    )]
    OutputOnSource {
        /// The output path.
        output: PathBuf,
        /// The source path.
        source_path: PathBuf,
        /// How the output meets the source: `is the source itself`, `is on
        /// the device being captured`, `is the backing file of the loop
        /// device being captured`.
        why: &'static str,
    },
    /// Two outputs of one capture (the image and the report) are the same file.
    #[error("{second_option} {path} is also the image output (-o): give it a path of its own")]
    OutputsCollide {
        /// The path given twice.
        path: PathBuf,
        /// The option naming the second output (`--report`).
        second_option: &'static str,
    },
    /// Creating or writing the output failed.
    #[error("Writing output {target} failed")]
    OutputWrite {
        /// A description of the output (path, `standard output`, URL without secrets).
        target: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The image service answered with an HTTP error.
    #[error("{service} answered {status} to {action}: {message}")]
    Http {
        /// Which service (`Glance`).
        service: &'static str,
        /// What was asked (`upload of image ID`), without secrets.
        action: String,
        /// The HTTP status code.
        status: u16,
        /// The service's own message, or a hint when it gave none.
        message: String,
    },
    /// The connection to the image service failed or broke.
    #[error(
        "{service} could not be reached during {action}: check the endpoint and that the service is up, then capture again"
    )]
    Connection {
        /// Which service (`Glance`).
        service: &'static str,
        /// What was being done, without secrets.
        action: String,
        /// The transport error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The connection broke during an upload and no answer could be read: the
    /// service may have answered and closed while the body was still being
    /// sent (the HTTP client then reports only the broken write), or it died.
    /// `detail` says what a lookup of the image showed afterwards.
    #[error(
        "{service} broke off the upload of image {image_id} without an answer that could be read: {detail}"
    )]
    UploadBrokenOff {
        /// Which service (`Glance`).
        service: &'static str,
        /// The remote image id.
        image_id: String,
        /// What the image's state says happened, and what to do.
        detail: String,
        /// The transport error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The image stored remotely does not match the bytes that were sent.
    #[error("Image {image_id} stored by {service} does not match what was sent: {detail}")]
    VerificationFailed {
        /// Which service.
        service: &'static str,
        /// The remote image id.
        image_id: String,
        /// Which digest or size differs, with both values.
        detail: String,
    },
    /// The remote image exists but cannot take data in its current state.
    #[error(
        "{service} image {image_id} is {status}, not queued: create a new image and capture into it"
    )]
    ImageNotQueued {
        /// Which service (`Glance`).
        service: &'static str,
        /// The remote image id.
        image_id: String,
        /// The image's current status.
        status: String,
    },
    /// The identity service's catalog lists no endpoint for a service.
    #[error(
        "The Keystone catalog has no {interface} endpoint for service type {service_type}{region}: give the endpoint explicitly or check OS_INTERFACE and OS_REGION_NAME"
    )]
    EndpointNotFound {
        /// The service type looked for (`image`).
        service_type: String,
        /// The endpoint interface looked for (`public`).
        interface: String,
        /// ` in region R` when a region was asked for, else empty.
        region: String,
    },
    /// The image to verify cannot be opened.
    #[error("Cannot open image {path}: check the path and that you may read it")]
    ImageOpen {
        /// The path that was given.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The image to verify is not a regular file.
    #[error("Image {path} is not a regular file: give the path of an image file")]
    ImageNotAFile {
        /// The path that was given.
        path: PathBuf,
    },
    /// Reading the image to verify failed.
    #[error("Reading image {what} at offset {offset} failed")]
    ImageRead {
        /// The image: a path or a description without secrets.
        what: String,
        /// Byte offset of the failed read.
        offset: u64,
        /// The error of the read.
        #[source]
        source: io::Error,
    },
    /// A capture report given to verify cannot be used.
    #[error(
        "Report {path} is not a capture report ({reason}): give the --report or --json output of ironic-snapshot capture"
    )]
    ReportInvalid {
        /// The report's path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The caller cancelled the capture.
    #[error("Capture cancelled")]
    Cancelled,
    /// A worker thread panicked or a channel closed unexpectedly.
    #[error("Internal error: {0}; please report this as a bug")]
    Internal(String),
}

impl Error {
    /// The coarse class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidSize { .. }
            | Error::InvalidOption { .. }
            | Error::OutputExists { .. }
            | Error::OutputOnSource { .. }
            | Error::OutputsCollide { .. } => ErrorKind::InvalidInput,
            Error::SourceNotFound { .. }
            | Error::SourceOpen { .. }
            | Error::SourceNotADisk { .. }
            | Error::SourceRead { .. }
            | Error::ShortRead { .. }
            | Error::SourceChanged { .. }
            | Error::ImageOpen { .. }
            | Error::ImageNotAFile { .. }
            | Error::ImageRead { .. }
            | Error::ReportInvalid { .. } => ErrorKind::Source,
            Error::OutputWrite { .. } => ErrorKind::Output,
            Error::Http { .. }
            | Error::Connection { .. }
            | Error::UploadBrokenOff { .. }
            | Error::ImageNotQueued { .. } => ErrorKind::Upload,
            Error::EndpointNotFound { .. } => ErrorKind::InvalidInput,
            Error::VerificationFailed { .. } => ErrorKind::Verification,
            Error::Cancelled => ErrorKind::Cancelled,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }
}
