//! Standard output as the destination: forward-only.

use std::fs::File;
use std::io::{self, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;

use super::Sink;
use crate::error::{Error, Result};

/// Writes the image to standard output, forward-only.
///
/// Writes go straight to file descriptor 1: `std::io::Stdout` is line
/// buffered and would scan every binary chunk for newlines.
#[derive(Debug)]
pub struct StdoutSink {
    out: ManuallyDrop<File>,
}

impl StdoutSink {
    /// Opens standard output. Refuses a terminal: an image is binary data.
    pub fn new() -> Result<StdoutSink> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(libc::STDOUT_FILENO) } == 1 {
            return Err(Error::InvalidOption {
                option: "--output",
                reason: "standard output is a terminal: redirect it to a file or a pipe".into(),
            });
        }
        // SAFETY: descriptor 1 stays open for the life of the process; the
        // ManuallyDrop keeps this File from closing it.
        let out = ManuallyDrop::new(unsafe { File::from_raw_fd(libc::STDOUT_FILENO) });
        Ok(StdoutSink { out })
    }

    fn error(source: io::Error) -> Error {
        Error::OutputWrite {
            target: "standard output".into(),
            source,
        }
    }
}

impl Sink for StdoutSink {
    fn seekable(&self) -> bool {
        false
    }

    fn write(&mut self, buf: &[u8]) -> Result<()> {
        self.out.write_all(buf).map_err(Self::error)
    }

    fn write_at(&mut self, _offset: u64, _buf: &[u8]) -> Result<()> {
        Err(Error::Internal(
            "Standard output is forward-only: write_at is not supported".into(),
        ))
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.out.flush().map_err(Self::error)
    }

    fn abort(self: Box<Self>) {
        // Nothing to take back: the reader of the pipe sees a short image
        // and the capture's error on standard error.
        tracing::warn!("Capture to standard output failed: what was written is incomplete");
    }

    fn describe(&self) -> String {
        "-".into()
    }
}
