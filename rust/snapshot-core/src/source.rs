//! The disk being captured: opened read-only, sized, and scanned for data.

// One whole range in a Vec is what an unsparse disk is, not a mistake.
#![allow(clippy::single_range_in_vec_init)]

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A disk opened read-only: a block device or a regular file.
#[derive(Debug)]
pub struct Source {
    file: File,
    path: PathBuf,
    size: u64,
    is_block_device: bool,
    /// Device the source's data lives on: the block device itself (`st_rdev`)
    /// or the device holding the file (`st_dev`).
    device: u64,
    /// Inode of the source, to recognise the source itself given as output.
    inode: (u64, u64),
}

impl Source {
    /// Opens `path` read-only. Never opens for writing, whatever the caller.
    ///
    /// Errors: [`Error::SourceNotFound`], [`Error::SourceNotADisk`] (a
    /// directory, socket, character device...), [`Error::SourceOpen`].
    pub fn open(path: &Path) -> Result<Source> {
        let metadata = std::fs::metadata(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => Error::SourceNotFound {
                path: path.to_owned(),
            },
            _ => Error::SourceOpen {
                path: path.to_owned(),
                source,
            },
        })?;
        let file_type = metadata.file_type();
        if !file_type.is_block_device() && !file_type.is_file() {
            return Err(Error::SourceNotADisk {
                path: path.to_owned(),
            });
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            // Never become the controlling terminal; close on exec so a
            // child process never inherits the disk.
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| Error::SourceOpen {
                path: path.to_owned(),
                source,
            })?;
        // Size and identity from the open descriptor, not the path: the path
        // could have been swapped between the check and the open.
        let opened = file.metadata().map_err(|source| Error::SourceOpen {
            path: path.to_owned(),
            source,
        })?;
        let is_block_device = opened.file_type().is_block_device();
        if !is_block_device && !opened.file_type().is_file() {
            return Err(Error::SourceNotADisk {
                path: path.to_owned(),
            });
        }
        let (size, device) = if is_block_device {
            let size = block_device_size(&file).map_err(|source| Error::SourceOpen {
                path: path.to_owned(),
                source,
            })?;
            (size, opened.rdev())
        } else {
            (opened.len(), opened.dev())
        };
        // The kernel reads ahead more eagerly for sequential access. Advice
        // only: failure changes nothing but speed.
        // SAFETY: plain syscall on a file descriptor we own; no memory involved.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
        }
        Ok(Source {
            file,
            path: path.to_owned(),
            size,
            is_block_device,
            device,
            inode: (opened.dev(), opened.ino()),
        })
    }

    /// Size of the disk in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Path the source was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the source is a block device.
    pub fn is_block_device(&self) -> bool {
        self.is_block_device
    }

    /// Device number the source's data lives on.
    pub fn device(&self) -> u64 {
        self.device
    }

    /// `(st_dev, st_ino)` of the source itself.
    pub fn inode(&self) -> (u64, u64) {
        self.inode
    }

    /// The open file, for planners that read metadata.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Ranges that may hold data: holes of a sparse file are left out
    /// (`SEEK_DATA`/`SEEK_HOLE`); a block device is all data.
    pub fn data_ranges(&self) -> Result<Vec<Range<u64>>> {
        if self.is_block_device || self.size == 0 {
            return Ok(if self.size == 0 {
                Vec::new()
            } else {
                vec![0..self.size]
            });
        }
        let fd = self.file.as_raw_fd();
        let mut ranges = Vec::new();
        let mut pos = 0u64;
        while pos < self.size {
            // SAFETY: lseek on a descriptor we own; no memory involved. The
            // file offset it moves is never used: reads are positional.
            let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
            if data < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    // No data after `pos`: the rest is a hole.
                    Some(libc::ENXIO) => break,
                    // The filesystem cannot tell: treat everything as data.
                    Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => return Ok(vec![0..self.size]),
                    _ => {
                        return Err(Error::SourceRead {
                            path: self.path.clone(),
                            offset: pos,
                            source: err,
                        });
                    }
                }
            }
            let data = data as u64;
            if data >= self.size {
                break;
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
            let hole = if hole < 0 {
                self.size
            } else {
                (hole as u64).min(self.size)
            };
            if hole > data {
                ranges.push(data..hole);
            }
            pos = hole.max(data + 1);
        }
        Ok(ranges)
    }

    /// Fills `buf` from `offset`, failing with [`Error::ShortRead`] if the
    /// source ends before `offset + buf.len()`.
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    return Err(Error::ShortRead {
                        path: self.path.clone(),
                        offset: offset + done as u64,
                        size: self.size,
                    });
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Error::SourceRead {
                        path: self.path.clone(),
                        offset: offset + done as u64,
                        source,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Size of a block device in bytes (`BLKGETSIZE64`).
fn block_device_size(file: &File) -> io::Result<u64> {
    // _IOR(0x12, 114, size_t)
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer we pass, which
    // points at a live u64.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(size)
    }
}

/// Intersection of two sorted lists of non-overlapping ranges.
pub fn intersect(a: &[Range<u64>], b: &[Range<u64>]) -> Vec<Range<u64>> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let start = a[i].start.max(b[j].start);
        let end = a[i].end.min(b[j].end);
        if start < end {
            out.push(start..end);
        }
        if a[i].end < b[j].end { i += 1 } else { j += 1 }
    }
    out
}

/// Whether a filesystem on device `device` would store its data on the
/// source's device `source`: the same device, a partition of it, or a
/// device stacked on it (device-mapper, md), as sysfs tells.
pub(crate) fn device_is_on(device: u64, source: u64) -> bool {
    device_is_on_depth(device, source, 0)
}

fn device_is_on_depth(device: u64, source: u64, depth: u32) -> bool {
    if device == source {
        return true;
    }
    // Stacks deeper than this do not occur; the bound guards against loops.
    if depth > 8 {
        return false;
    }
    let sys = |dev: u64| {
        PathBuf::from(format!(
            "/sys/dev/block/{}:{}",
            libc::major(dev),
            libc::minor(dev)
        ))
    };
    let (Ok(dev_path), Ok(src_path)) = (
        std::fs::canonicalize(sys(device)),
        std::fs::canonicalize(sys(source)),
    ) else {
        // Not a block device (tmpfs, overlay...) or sysfs absent: only
        // equality, checked above, can tell.
        return false;
    };
    // A partition's sysfs folder lies inside its disk's folder.
    if dev_path.starts_with(&src_path) {
        return true;
    }
    let Ok(slaves) = std::fs::read_dir(dev_path.join("slaves")) else {
        return false;
    };
    slaves.flatten().any(|slave| {
        std::fs::read_to_string(slave.path().join("dev"))
            .ok()
            .and_then(|text| {
                let (major, minor) = text.trim().split_once(':')?;
                Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
            })
            .is_some_and(|slave_dev| device_is_on_depth(slave_dev, source, depth + 1))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_holes_in_sparse_files() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(64 << 20).unwrap();
        file.as_file().write_all_at(&[1u8; 4096], 8 << 20).unwrap();
        let source = Source::open(file.path()).unwrap();
        let ranges = source.data_ranges().unwrap();
        let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        assert!(ranges.iter().any(|r| r.contains(&(8 << 20))), "{ranges:?}");
        assert!(total < 16 << 20, "holes not found: {ranges:?}");
    }

    #[test]
    fn missing_source_is_named() {
        let err = Source::open(Path::new("/nonexistent/disk")).unwrap_err();
        assert!(matches!(err, Error::SourceNotFound { .. }), "{err}");
    }

    #[test]
    fn directories_are_refused() {
        let err = Source::open(Path::new("/tmp")).unwrap_err();
        assert!(matches!(err, Error::SourceNotADisk { .. }), "{err}");
    }

    #[test]
    fn intersects_range_lists() {
        assert_eq!(intersect(&[0..10, 20..30], &[5..25]), vec![5..10, 20..25]);
        assert_eq!(intersect(&[0..10], &[10..20]), vec![]);
        assert_eq!(intersect(&[0..100], &[1..2, 3..4]), vec![1..2, 3..4]);
    }

    #[test]
    fn a_device_is_on_itself() {
        assert!(device_is_on(libc::makedev(7, 0), libc::makedev(7, 0)));
        assert!(!device_is_on(
            libc::makedev(0, 9999),
            libc::makedev(0, 9998)
        ));
    }
}
