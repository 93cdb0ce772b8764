//! Where image bytes go: a file or standard output here; an upload is a
//! [`Sink`] of another crate (`snapshot-openstack`'s Glance sink).
//!
//! The layout writer emits bytes in order through [`Sink::write`]. A seekable
//! sink additionally accepts [`Sink::write_at`], which lets the writer put the
//! qcow2 header into cluster 0 after everything else (one pass), and
//! [`Sink::read_at`], which lets it digest the finished image. Forward-only
//! sinks get the very same bytes, header first, through the spool.

mod file;
mod stdout;

pub use file::{FileSink, PendingFile, remove_partial_outputs};
pub use stdout::StdoutSink;

use crate::error::{Error, Result};

/// A destination for image bytes.
pub trait Sink: Send {
    /// Whether [`Sink::write_at`], [`Sink::read_at`] and [`Sink::set_len`]
    /// are supported.
    fn seekable(&self) -> bool;

    /// Appends `buf` at the current end of the output.
    fn write(&mut self, buf: &[u8]) -> Result<()>;

    /// Writes `buf` at `offset`, which must lie before the current end (only
    /// called when [`Sink::seekable`] is true). A raw image written to a
    /// seekable sink also writes beyond the end, leaving holes for zeros.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<()>;

    /// Fills `buf` with the bytes written at `offset` (only called when
    /// [`Sink::seekable`] is true): the engine digests a qcow2 image whose
    /// header was written last by reading it back.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let _ = (offset, buf);
        Err(Error::Internal(format!(
            "{} cannot be read back",
            self.describe()
        )))
    }

    /// Sets the length of the output, extending it with a hole (only called
    /// when [`Sink::seekable`] is true, for a raw image ending in zeros).
    fn set_len(&mut self, len: u64) -> Result<()> {
        let _ = len;
        Err(Error::Internal(format!(
            "{} cannot be resized",
            self.describe()
        )))
    }

    /// Completes the output: flushes and syncs a file, ends an upload and waits
    /// for the service to accept it. Called once, after the last write.
    fn finish(self: Box<Self>) -> Result<()>;

    /// Abandons the output after a failure or cancellation so that nothing
    /// half-written can pass for an image: removes a partial file, breaks off
    /// an upload so the service never marks the image active. Best effort.
    fn abort(self: Box<Self>);

    /// A description for messages and the report, without secrets.
    fn describe(&self) -> String;

    /// Most bytes of memory the sink holds in buffers of its own (an upload
    /// queue), whatever the image size: a streaming capture counts them
    /// within its memory limit.
    fn buffer_bytes(&self) -> u64 {
        0
    }
}
