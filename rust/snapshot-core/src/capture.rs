//! The capture entry point: source -> plan -> pipeline -> layout -> sink.

use std::path::Path;

use crate::error::{Error, Result};
use crate::options::{CaptureOptions, Target};
use crate::progress::Progress;
use crate::report::Report;

/// Captures the disk at `source` (a block device or a regular file, opened
/// read-only) into `target` as `options` say, reporting progress to
/// `progress`, and returns the report of the emitted image.
pub fn capture(source: &Path, target: &Target, options: &CaptureOptions, progress: &dyn Progress) -> Result<Report> {
    let _ = (source, target, options, progress);
    Err(Error::Internal("The capture engine is being built".into()))
}
