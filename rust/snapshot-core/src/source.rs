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

    /// `(st_dev, st_ino)` of the source itself.
    pub(crate) fn inode(&self) -> (u64, u64) {
        self.inode
    }

    /// The open file, for planners that read metadata.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Ranges that may hold data: holes of a sparse file are left out
    /// (`SEEK_DATA`/`SEEK_HOLE`); a block device is all data.
    pub(crate) fn data_ranges(&self) -> Result<Vec<Range<u64>>> {
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
    pub(crate) fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
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
pub(crate) fn intersect(a: &[Range<u64>], b: &[Range<u64>]) -> Vec<Range<u64>> {
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

/// Something a write can change: a block device (`dev_t`) or one file
/// (`st_dev`, `st_ino`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Storage {
    Block(u64),
    File(u64, u64),
}

/// Why an output is refused: the sentence fragment of
/// [`Error::OutputOnSource`].
const IS_SOURCE: &str = "is the source itself";
const ON_SOURCE: &str = "is on the device being captured";
const BACKING: &str = "is the backing file of the loop device being captured";

/// Refuses an output path whose writes would change the disk being captured,
/// and nothing else: the source itself (same inode, through hard links or
/// symlinks too), a path on a filesystem stored on the source device, on one
/// of its partitions or on a device stacked on it (device-mapper, md, a loop
/// device whose backing file lies there), or the backing file of a loop
/// device being captured. A regular-file source only refuses itself (and
/// filesystems stored in it through a loop device): an image written beside
/// it does not touch it.
///
/// The same check guards every file the engine's front ends write (the image
/// and the report), so there is one definition of "on the source".
pub fn check_output(output: &Path, disk: &Source) -> Result<()> {
    let refuse = |why: &'static str| Error::OutputOnSource {
        output: output.to_owned(),
        source_path: disk.path().to_owned(),
        why,
    };
    let under = disk.storage();
    let hits = |touched: &[Storage]| {
        touched
            .iter()
            .any(|t| under.iter().any(|u| storage_overlaps(*t, *u)))
    };
    if let Ok(meta) = std::fs::metadata(output) {
        if meta.file_type().is_block_device() {
            if hits(&block_down(meta.rdev())) {
                return Err(refuse(ON_SOURCE));
            }
        } else {
            let file = Storage::File(meta.dev(), meta.ino());
            if (meta.dev(), meta.ino()) == disk.inode() {
                return Err(refuse(IS_SOURCE));
            }
            if under.contains(&file) {
                return Err(refuse(BACKING));
            }
        }
        // Where the existing file's data lives (a symlink may lead to
        // another filesystem than its folder's).
        if hits(&block_down(filesystem_device(meta.dev()))) {
            return Err(refuse(ON_SOURCE));
        }
    }
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    if let Ok(meta) = std::fs::metadata(&parent) {
        if hits(&block_down(filesystem_device(meta.dev()))) {
            return Err(refuse(ON_SOURCE));
        }
    }
    Ok(())
}

impl Source {
    /// What the source's bytes are made of: a regular file is only itself
    /// (writing other files of its filesystem leaves it alone); a block
    /// device is itself, the devices it is stacked on and the backing files
    /// of the loop devices among them.
    fn storage(&self) -> Vec<Storage> {
        if !self.is_block_device {
            return vec![Storage::File(self.inode.0, self.inode.1)];
        }
        let mut out = Vec::new();
        stacked_under(self.device, 0, &mut out);
        let files: Vec<Storage> = out
            .iter()
            .filter_map(|s| match s {
                Storage::Block(dev) => loop_backing_file(*dev),
                Storage::File(..) => None,
            })
            .map(|(dev, ino)| Storage::File(dev, ino))
            .collect();
        out.extend(files);
        out
    }
}

/// sysfs folder of a block device, resolved (`/sys/devices/.../sda/sda1`).
fn sysfs_dir(dev: u64) -> Option<PathBuf> {
    std::fs::canonicalize(format!(
        "/sys/dev/block/{}:{}",
        libc::major(dev),
        libc::minor(dev)
    ))
    .ok()
}

/// Whether a write to `touched` can change `source`. Two block devices
/// overlap when they are the same or one is a partition of the other (a
/// partition's sysfs folder lies inside its disk's).
fn storage_overlaps(touched: Storage, source: Storage) -> bool {
    match (touched, source) {
        (Storage::File(..), Storage::File(..)) => touched == source,
        (Storage::Block(a), Storage::Block(b)) => {
            a == b
                || match (sysfs_dir(a), sysfs_dir(b)) {
                    (Some(a), Some(b)) => a.starts_with(&b) || b.starts_with(&a),
                    _ => false,
                }
        }
        _ => false,
    }
}

/// The block device and the devices it is stacked on (its sysfs `slaves`,
/// recursively).
fn stacked_under(dev: u64, depth: u32, out: &mut Vec<Storage>) {
    if out.contains(&Storage::Block(dev)) {
        return;
    }
    out.push(Storage::Block(dev));
    // Stacks deeper than this do not occur; the bound guards against loops.
    if depth > 8 {
        return;
    }
    let Some(dir) = sysfs_dir(dev) else { return };
    let Ok(slaves) = std::fs::read_dir(dir.join("slaves")) else {
        return;
    };
    for slave in slaves.flatten() {
        if let Some(slave_dev) = read_dev(&slave.path().join("dev")) {
            stacked_under(slave_dev, depth + 1, out);
        }
    }
}

/// Everything a write to block device `dev` (or to a filesystem on it) can
/// change: the device, the devices under it, and for a loop device among
/// them its backing file and, recursively, the devices that file lives on.
fn block_down(dev: u64) -> Vec<Storage> {
    let mut out = Vec::new();
    block_down_into(dev, 0, &mut out);
    out
}

fn block_down_into(dev: u64, depth: u32, out: &mut Vec<Storage>) {
    let before = out.len();
    stacked_under(dev, depth, out);
    if depth > 8 {
        return;
    }
    let added: Vec<u64> = out[before..]
        .iter()
        .filter_map(|s| match s {
            Storage::Block(dev) => Some(*dev),
            Storage::File(..) => None,
        })
        .collect();
    for dev in added {
        if let Some((fs_dev, ino)) = loop_backing_file(dev) {
            if !out.contains(&Storage::File(fs_dev, ino)) {
                out.push(Storage::File(fs_dev, ino));
                block_down_into(filesystem_device(fs_dev), depth + 1, out);
            }
        }
    }
}

/// `(st_dev, st_ino)` of the backing file of loop device `dev` (or of the
/// loop device a partition `dev` belongs to), from sysfs.
fn loop_backing_file(dev: u64) -> Option<(u64, u64)> {
    let dir = sysfs_dir(dev)?;
    let candidates = [
        dir.join("loop/backing_file"),
        dir.join("../loop/backing_file"),
    ];
    let text = candidates
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())?;
    // The kernel prints the path it was given, with " (deleted)" once the
    // file is unlinked: then nobody can name it as an output anyway.
    let meta = std::fs::metadata(text.trim_end_matches('\n')).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// The block device behind a filesystem's `st_dev`. Most filesystems report
/// their device itself; btrfs (and others) report an anonymous device number
/// that sysfs does not know: then the mount table names the device mounted.
fn filesystem_device(st_dev: u64) -> u64 {
    if sysfs_dir(st_dev).is_some() {
        return st_dev;
    }
    let wanted = format!("{}:{}", libc::major(st_dev), libc::minor(st_dev));
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return st_dev;
    };
    // mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS... - FSTYPE SOURCE ...
    table
        .lines()
        .filter(|line| line.split(' ').nth(2) == Some(wanted.as_str()))
        .filter_map(|line| line.split_once(" - ")?.1.split(' ').nth(1))
        .filter(|source| source.starts_with('/'))
        .find_map(|source| {
            let meta = std::fs::metadata(source).ok()?;
            meta.file_type().is_block_device().then(|| meta.rdev())
        })
        .unwrap_or(st_dev)
}

/// Parses a sysfs `dev` file (`MAJOR:MINOR`).
fn read_dev(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let (major, minor) = text.trim().split_once(':')?;
    Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
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
    fn a_device_overlaps_itself_only() {
        let a = Storage::Block(libc::makedev(7, 0));
        assert!(storage_overlaps(a, a));
        assert!(!storage_overlaps(
            Storage::Block(libc::makedev(0, 9999)),
            Storage::Block(libc::makedev(0, 9998))
        ));
        assert!(!storage_overlaps(Storage::File(1, 2), a));
    }

    #[test]
    fn a_file_beside_a_file_source_is_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        std::fs::write(&disk, [1u8; 4096]).unwrap();
        let source = Source::open(&disk).unwrap();
        check_output(&dir.path().join("disk.qcow2"), &source).unwrap();
        let err = check_output(&disk, &source).unwrap_err();
        assert!(
            matches!(err, Error::OutputOnSource { why: IS_SOURCE, .. }),
            "{err}"
        );
        let link = dir.path().join("link.img");
        std::fs::hard_link(&disk, &link).unwrap();
        let err = check_output(&link, &source).unwrap_err();
        assert!(
            matches!(err, Error::OutputOnSource { why: IS_SOURCE, .. }),
            "{err}"
        );
    }
}
