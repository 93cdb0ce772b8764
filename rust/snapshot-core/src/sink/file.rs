//! A local file as the destination: seekable, so qcow2 is written in one pass.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::Sink;
use crate::error::{Error, Result};

/// Writes the image to a file, removing it again if the capture fails so
/// that nothing half-written can pass for an image.
#[derive(Debug)]
pub struct FileSink {
    file: File,
    path: PathBuf,
    /// Current end of what was written (the append position).
    end: u64,
}

impl FileSink {
    /// Creates the file at `path`: fails with [`Error::OutputExists`] if it
    /// exists, unless `force` (then it is truncated). Only regular files are
    /// written: an existing device, directory or pipe is refused.
    pub fn create(path: &Path, force: bool) -> Result<FileSink> {
        let write_error = |source: io::Error| Error::OutputWrite {
            target: path.display().to_string(),
            source,
        };
        if let Ok(existing) = std::fs::metadata(path) {
            if !force {
                return Err(Error::OutputExists {
                    path: path.to_owned(),
                });
            }
            if !existing.file_type().is_file() {
                return Err(Error::InvalidOption {
                    option: "--output",
                    reason: format!(
                        "{} exists and is not a regular file: give the path of a new file",
                        path.display()
                    ),
                });
            }
        }
        let mut options = std::fs::OpenOptions::new();
        // Read access too: the digests of a qcow2 image are computed by
        // reading it back once its header (written last) is in place.
        options
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .mode(0o644);
        if force {
            options.create(true).truncate(true);
        } else {
            options.create_new(true);
        }
        let file = options.open(path).map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => Error::OutputExists {
                path: path.to_owned(),
            },
            _ => write_error(source),
        })?;
        Ok(FileSink {
            file,
            path: path.to_owned(),
            end: 0,
        })
    }

    /// Path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, source: io::Error) -> Error {
        Error::OutputWrite {
            target: self.path.display().to_string(),
            source,
        }
    }
}

/// `(st_dev, st_ino)` and, for a device node, `st_rdev` of an existing path.
pub(crate) fn identity(path: &Path) -> Option<(u64, u64, Option<u64>)> {
    let meta = std::fs::metadata(path).ok()?;
    let rdev = meta.file_type().is_block_device().then(|| meta.rdev());
    Some((meta.dev(), meta.ino(), rdev))
}

impl Sink for FileSink {
    fn seekable(&self) -> bool {
        true
    }

    fn write(&mut self, buf: &[u8]) -> Result<()> {
        self.file
            .write_all_at(buf, self.end)
            .map_err(|e| self.error(e))?;
        self.end += buf.len() as u64;
        Ok(())
    }

    fn write_at(&mut self, offset: u64, buf: &[u8]) -> Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| self.error(e))?;
        self.end = self.end.max(offset + buf.len() as u64);
        Ok(())
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| self.error(e))
    }

    fn set_len(&mut self, len: u64) -> Result<()> {
        self.file.set_len(len).map_err(|e| self.error(e))?;
        self.end = len;
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<()> {
        // An image that is reported done must survive a crash right after;
        // one that cannot be synced is not an image.
        if let Err(err) = self.file.sync_all() {
            let err = self.error(err);
            self.abort();
            return Err(err);
        }
        Ok(())
    }

    fn abort(self: Box<Self>) {
        let FileSink { file, path, .. } = *self;
        drop(file);
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::debug!(path = %path.display(), "Removed the partial output"),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "Could not remove the partial output: delete it by hand")
            }
        }
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_output_is_refused_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.img");
        std::fs::write(&path, b"keep").unwrap();
        let err = FileSink::create(&path, false).unwrap_err();
        assert!(matches!(err, Error::OutputExists { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
        let mut sink = Box::new(FileSink::create(&path, true).unwrap());
        sink.write(b"new").unwrap();
        sink.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn abort_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.img");
        let mut sink = Box::new(FileSink::create(&path, false).unwrap());
        sink.write(b"partial").unwrap();
        sink.abort();
        assert!(!path.exists());
    }

    #[test]
    fn directories_are_not_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let err = FileSink::create(dir.path(), true).unwrap_err();
        assert!(matches!(err, Error::InvalidOption { .. }), "{err}");
    }
}
