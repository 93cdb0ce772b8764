//! A writer of `newc` cpio archives, the format the kernel unpacks as an initramfs.
//!
//! Each entry is a 110-byte ASCII header (`070701` and thirteen 8-digit hex
//! fields), the NUL-terminated name padded to 4 bytes, then the data padded
//! to 4 bytes; `TRAILER!!!` ends the archive. The kernel creates entries in
//! order, so a folder must come before what it holds: [`Writer`] adds missing
//! parent folders itself.

use std::collections::BTreeSet;
use std::io::{self, Write};

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Streams a `newc` archive into `W` (a memfd, a `Vec<u8>`).
pub struct Writer<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
    dirs: BTreeSet<String>,
}

impl<W: Write> Writer<W> {
    /// Starts an empty archive.
    pub fn new(out: W) -> Self {
        Writer {
            out,
            written: 0,
            next_ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Adds a folder (and its missing parents) with permissions `perm`.
    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        let path = normalise(path)?;
        self.parents(&path)?;
        if self.dirs.insert(path.clone()) {
            self.entry(&path, S_IFDIR | (perm & 0o7777), 2, (0, 0), &[])?;
        }
        Ok(())
    }

    /// Adds a regular file with permissions `perm` holding `data`.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        let path = normalise(path)?;
        self.parents(&path)?;
        self.entry(&path, S_IFREG | (perm & 0o7777), 1, (0, 0), data)
    }

    /// Adds a symbolic link `path` pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let path = normalise(path)?;
        self.parents(&path)?;
        self.entry(&path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    /// Adds a character device node (`/dev/console` is 5:1).
    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        let path = normalise(path)?;
        self.parents(&path)?;
        self.entry(&path, S_IFCHR | (perm & 0o7777), 1, (major, minor), &[])
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 0, 1, (0, 0), 0)?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn parents(&mut self, path: &str) -> io::Result<()> {
        let mut end = 0;
        while let Some(slash) = path[end..].find('/') {
            end += slash;
            let parent = &path[..end];
            if !self.dirs.contains(parent) {
                self.dirs.insert(parent.to_owned());
                self.entry(parent, S_IFDIR | 0o755, 2, (0, 0), &[])?;
            }
            end += 1;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        path: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path} is over 4 GiB, the newc limit"),
            )
        })?;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(path, ino, mode, nlink, rdev, size)?;
        self.put(data)?;
        self.pad()
    }

    fn header(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        size: u32,
    ) -> io::Result<()> {
        let namesize = name.len() as u32 + 1;
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        let header = format!(
            "070701{ino:08X}{mode:08X}{:08X}{:08X}{nlink:08X}{:08X}{size:08X}{:08X}{:08X}{:08X}{:08X}{namesize:08X}{:08X}",
            0, 0, 0, 0, 0, rdev.0, rdev.1, 0
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    fn put(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0; 3][..pad])
    }
}

/// An archive path: relative, no empty, `.` or `..` parts.
fn normalise(path: &str) -> io::Result<String> {
    let trimmed = path.trim_start_matches('/');
    let bad = trimmed.is_empty()
        || trimmed
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{path:?} is not a plain path inside the archive"),
        ));
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn sample() -> Vec<u8> {
        let mut w = Writer::new(Vec::new());
        w.file("/init", 0o755, b"#!/bin/true\n").unwrap();
        w.dir("/dev", 0o755).unwrap();
        w.char_device("/dev/console", 0o600, 5, 1).unwrap();
        w.file(
            "lib/modules/6.1/kernel/drivers/virtio_blk.ko",
            0o644,
            &[7u8; 1001],
        )
        .unwrap();
        w.symlink("/sbin", "bin").unwrap();
        w.file("/empty", 0o600, b"").unwrap();
        w.finish().unwrap()
    }

    /// Runs `cpio` (GNU, the real one) with `args` on `archive` in `dir`.
    fn cpio(archive: &[u8], args: &[&str], dir: &std::path::Path) -> String {
        let mut child = Command::new("cpio")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cpio (Debian package cpio) must be installed");
        child.stdin.take().unwrap().write_all(archive).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "cpio {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn gnu_cpio_lists_the_archive_in_order() {
        let archive = sample();
        assert_eq!(archive.len() % 4, 0);
        let dir = tempfile::tempdir().unwrap();
        let listing = cpio(&archive, &["-t", "--quiet", "-H", "newc"], dir.path());
        assert_eq!(
            listing.lines().collect::<Vec<_>>(),
            [
                "init",
                "dev",
                "dev/console",
                "lib",
                "lib/modules",
                "lib/modules/6.1",
                "lib/modules/6.1/kernel",
                "lib/modules/6.1/kernel/drivers",
                "lib/modules/6.1/kernel/drivers/virtio_blk.ko",
                "sbin",
                "empty",
            ]
        );
        let verbose = cpio(&archive, &["-tv", "--quiet", "-H", "newc"], dir.path());
        let console = verbose
            .lines()
            .find(|l| l.ends_with("dev/console"))
            .unwrap();
        assert!(console.starts_with("crw-------"), "{console}");
        assert!(console.contains("5,"), "{console}");
    }

    #[test]
    fn gnu_cpio_extracts_the_same_bytes() {
        let archive = sample();
        let dir = tempfile::tempdir().unwrap();
        // No device nodes outside a real root: extract everything else.
        cpio(
            &archive,
            &[
                "-i",
                "--quiet",
                "-d",
                "--no-absolute-filenames",
                "-H",
                "newc",
                "-f",
                "dev/console",
            ],
            dir.path(),
        );
        let root = dir.path();
        assert_eq!(std::fs::read(root.join("init")).unwrap(), b"#!/bin/true\n");
        let module = root.join("lib/modules/6.1/kernel/drivers/virtio_blk.ko");
        assert_eq!(std::fs::read(module).unwrap(), vec![7u8; 1001]);
        assert_eq!(
            std::fs::read_link(root.join("sbin")).unwrap().to_str(),
            Some("bin")
        );
        assert_eq!(std::fs::read(root.join("empty")).unwrap(), b"");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.join("init"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }

    #[test]
    fn bad_paths_are_refused() {
        let mut w = Writer::new(Vec::new());
        for bad in ["", "/", "a/../b", "a//b", "./x"] {
            assert!(w.file(bad, 0o644, b"").is_err(), "{bad:?}");
        }
    }
}
