//! Where image bytes go: a file, standard output or an HTTP upload.
//!
//! The layout writer emits bytes in order through [`Sink::write`]. A seekable
//! sink additionally accepts [`Sink::write_at`], which lets the writer put the
//! qcow2 header into cluster 0 after everything else (one pass). Forward-only
//! sinks get the very same bytes, header first, through the spool.

pub mod glance;
pub mod http;

use crate::error::Result;

/// A destination for image bytes.
pub trait Sink: Send {
    /// Whether [`Sink::write_at`] is supported.
    fn seekable(&self) -> bool;

    /// Appends `buf` at the current end of the output.
    fn write(&mut self, buf: &[u8]) -> Result<()>;

    /// Writes `buf` at `offset`, which must lie before the current end (only
    /// called when [`Sink::seekable`] is true).
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<()>;

    /// Completes the output: flushes and syncs a file, ends an upload and waits
    /// for the service to accept it. Called once, after the last write.
    fn finish(self: Box<Self>) -> Result<()>;

    /// Abandons the output after a failure or cancellation so that nothing
    /// half-written can pass for an image: removes a partial file, breaks off
    /// an upload so the service never marks the image active. Best effort.
    fn abort(self: Box<Self>);

    /// A description for messages and the report, without secrets.
    fn describe(&self) -> String;
}
