//! A local file as the destination: seekable, so qcow2 is written in one pass.
//!
//! Every file the engine creates is partial until it is complete: it is
//! removed on failure, on cancellation, when its owner is dropped (a panic
//! unwinding through the capture) and, through [`remove_partial_outputs`],
//! by a front end that must exit at once (a second signal, a panic that
//! aborts).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Sink;
use crate::error::{Error, Result};
use crate::source::{self, Source};

/// A file being written: its path and the inode created there, so that the
/// path is only removed while it still names that file.
struct Partial {
    id: u64,
    path: PathBuf,
    inode: (u64, u64),
}

/// Files created and not yet complete, process-wide.
static PARTIALS: Mutex<Vec<Partial>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn partials() -> std::sync::MutexGuard<'static, Vec<Partial>> {
    // A panic while the list was held leaves it usable: it is plain data.
    PARTIALS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Registers a file just created at `path` as partial; returns its id.
fn register(path: &Path, file: &File) -> u64 {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let inode = file
        .metadata()
        .map(|meta| (meta.dev(), meta.ino()))
        .unwrap_or((0, 0));
    partials().push(Partial {
        id,
        path: path.to_owned(),
        inode,
    });
    id
}

/// Removes partial file `id` (if it is still partial) and forgets it.
fn remove_partial(id: u64) {
    let mut list = partials();
    if let Some(at) = list.iter().position(|p| p.id == id) {
        let partial = list.swap_remove(at);
        remove_if_same(&partial);
    }
}

/// Forgets partial file `id` without removing it: it is complete.
fn forget_partial(id: u64) {
    partials().retain(|p| p.id != id);
}

fn remove_if_same(partial: &Partial) {
    let same = std::fs::symlink_metadata(&partial.path)
        .is_ok_and(|meta| (meta.dev(), meta.ino()) == partial.inode);
    if !same {
        // Gone already, or the path names another file now: leave it.
        return;
    }
    match std::fs::remove_file(&partial.path) {
        Ok(()) => tracing::debug!(path = %partial.path.display(), "Removed the partial output"),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => {
            tracing::warn!(path = %partial.path.display(), error = %err, "Could not remove the partial output: delete it by hand")
        }
    }
}

/// Removes every file the engine is still writing in this process (image
/// files and pending reports): for a front end about to exit without
/// unwinding (a second Ctrl-C, a panic in a binary built to abort). A
/// capture still running keeps writing into the unlinked file harmlessly.
/// Files complete by then are left alone.
pub fn remove_partial_outputs() {
    let list = std::mem::take(&mut *partials());
    for partial in &list {
        remove_if_same(partial);
    }
}

/// Refuses to write to `path` unless it is new, or `force` and an existing
/// regular file; `option` names the flag for the message.
fn check_writable(path: &Path, force: bool, option: &'static str) -> Result<()> {
    if let Ok(existing) = std::fs::metadata(path) {
        if !force {
            return Err(Error::OutputExists {
                path: path.to_owned(),
            });
        }
        if !existing.file_type().is_file() {
            return Err(Error::InvalidOption {
                option,
                reason: format!(
                    "{} exists and is not a regular file: give the path of a new file",
                    path.display()
                ),
            });
        }
    }
    Ok(())
}

/// Writes the image to a file, removing it again if the capture fails (or
/// the sink is dropped unfinished) so that nothing half-written can pass for
/// an image.
#[derive(Debug)]
pub struct FileSink {
    file: File,
    path: PathBuf,
    /// Current end of what was written (the append position).
    end: u64,
    /// Entry in the list of partial files; 0 once complete.
    partial: u64,
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
        check_writable(path, force, "--output")?;
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
        let partial = register(path, &file);
        Ok(FileSink {
            file,
            path: path.to_owned(),
            end: 0,
            partial,
        })
    }

    fn error(&self, source: io::Error) -> Error {
        Error::OutputWrite {
            target: self.path.display().to_string(),
            source,
        }
    }
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

    fn finish(mut self: Box<Self>) -> Result<()> {
        // An image that is reported done must survive a crash right after;
        // one that cannot be synced is not an image (dropping removes it).
        self.file.sync_all().map_err(|e| self.error(e))?;
        forget_partial(std::mem::take(&mut self.partial));
        Ok(())
    }

    fn abort(self: Box<Self>) {
        // Dropping an unfinished sink removes its file.
        drop(self);
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        if self.partial != 0 {
            remove_partial(self.partial);
        }
    }
}

/// A small file written whole once a capture succeeds (the JSON report),
/// with the same checks as the image output, made before the capture so
/// that a bad path fails in seconds: [`PendingFile::create`] checks the
/// path and creates a temporary file beside it; [`PendingFile::commit`]
/// writes it and renames it into place. Dropped uncommitted (failure,
/// cancellation, panic), it leaves nothing behind.
#[derive(Debug)]
pub struct PendingFile {
    file: File,
    temp: PathBuf,
    path: PathBuf,
    force: bool,
    partial: u64,
}

impl PendingFile {
    /// Checks `path` as an output of the capture of `source` (not the
    /// source, not on it, not the same file as `image`, new unless `force`,
    /// a regular file if it exists) and creates the temporary file beside
    /// it. `option` names the flag in messages (`--report`).
    ///
    /// Errors: those of [`Source::open`], [`Error::OutputOnSource`],
    /// [`Error::OutputsCollide`], [`Error::OutputExists`],
    /// [`Error::InvalidOption`], [`Error::OutputWrite`] (the folder cannot
    /// be written).
    pub fn create(
        path: &Path,
        force: bool,
        source_path: &Path,
        image: Option<&Path>,
        option: &'static str,
    ) -> Result<PendingFile> {
        let disk = Source::open(source_path)?;
        source::check_output(path, &disk)?;
        drop(disk);
        if image.is_some_and(|image| same_file(path, image)) {
            return Err(Error::OutputsCollide {
                path: path.to_owned(),
                second_option: option,
            });
        }
        check_writable(path, force, option)?;
        let write_error = |source: io::Error| Error::OutputWrite {
            target: path.display().to_string(),
            source,
        };
        let name = path.file_name().ok_or_else(|| Error::InvalidOption {
            option,
            reason: format!("{} names no file: give a file path", path.display()),
        })?;
        let folder = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let mut attempt = 0u32;
        let (file, temp) = loop {
            let mut temp_name = std::ffi::OsString::from(".");
            temp_name.push(name);
            temp_name.push(format!(".{}-{attempt}.partial", std::process::id()));
            let temp = folder.join(temp_name);
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_CLOEXEC)
                .mode(0o644)
                .open(&temp)
            {
                Ok(file) => break (file, temp),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => {
                    attempt += 1;
                }
                Err(err) => return Err(write_error(err)),
            }
        };
        let partial = register(&temp, &file);
        Ok(PendingFile {
            file,
            temp,
            path: path.to_owned(),
            force,
            partial,
        })
    }

    /// Path the file will have once committed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents`, syncs and moves the file into place: over an
    /// existing file only with `force`, otherwise failing with
    /// [`Error::OutputExists`] if one appeared meanwhile.
    pub fn commit(mut self, contents: &[u8]) -> Result<()> {
        let write_error = |source: io::Error| Error::OutputWrite {
            target: self.path.display().to_string(),
            source,
        };
        self.file
            .write_all(contents)
            .and_then(|()| self.file.sync_all())
            .map_err(write_error)?;
        // The list lock is held across the rename so that a concurrent
        // remove_partial_outputs() either removes the temporary file first
        // (the rename then fails) or finds it complete.
        let mut list = partials();
        let renamed = if self.force {
            std::fs::rename(&self.temp, &self.path)
        } else {
            rename_noreplace(&self.temp, &self.path)
        };
        match renamed {
            Ok(()) => {
                list.retain(|p| p.id != self.partial);
                self.partial = 0;
                Ok(())
            }
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Err(Error::OutputExists {
                path: self.path.clone(),
            }),
            Err(err) => Err(Error::OutputWrite {
                target: self.path.display().to_string(),
                source: err,
            }),
        }
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if self.partial != 0 {
            remove_partial(self.partial);
        }
    }
}

/// `rename(2)` that fails with `AlreadyExists` instead of replacing: a
/// hard link and an unlink where `renameat2(RENAME_NOREPLACE)` is missing.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let from_c = std::ffi::CString::new(from.as_os_str().as_bytes())?;
    let to_c = std::ffi::CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths; no memory is written.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOSYS) => {
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        _ => Err(err),
    }
}

/// Whether two paths name one file: the same inode if both exist, else the
/// same name in the same folder.
fn same_file(a: &Path, b: &Path) -> bool {
    let inode = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    if let (Some(a), Some(b)) = (inode(a), inode(b)) {
        return a == b;
    }
    let folder = |p: &Path| match p.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => inode(parent),
        _ => inode(Path::new(".")),
    };
    a.file_name() == b.file_name() && folder(a).is_some() && folder(a) == folder(b)
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
