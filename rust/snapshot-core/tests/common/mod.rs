//! Helpers shared by the integration tests: source files, sinks, and
//! qemu-img as the judge of every image.

#![allow(dead_code, missing_docs)]

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use snapshot_core::Sink;
use snapshot_core::{CaptureOptions, Compression, Format, NoProgress, Report, Result, Target};

/// Folders for sources and outputs on different filesystems, so that an
/// output folder holds only what a capture wrote (the engine allows an
/// image beside a source file; it refuses only the source itself).
pub struct Dirs {
    pub source: tempfile::TempDir,
    pub output: tempfile::TempDir,
}

pub fn dirs() -> Dirs {
    let output = tempfile::tempdir().expect("temporary folder");
    let out_dev = std::fs::metadata(output.path()).unwrap().dev();
    for candidate in ["/dev/shm", "/var/tmp", "/run"] {
        let Ok(meta) = std::fs::metadata(candidate) else {
            continue;
        };
        if meta.dev() == out_dev {
            continue;
        }
        if let Ok(source) = tempfile::tempdir_in(candidate) {
            return Dirs { source, output };
        }
    }
    panic!(
        "These tests need a writable folder on another filesystem than {} for their source disks (/dev/shm is usual)",
        output.path().display()
    );
}

/// xorshift64*: fast, deterministic bytes that no compressor can shrink.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.fill(&mut buf);
        buf
    }
}

/// Compressible text-like bytes with some variation.
pub fn text(len: usize, seed: u64) -> Vec<u8> {
    let words: [&[u8]; 8] = [
        b"snapshot ",
        b"ironic ",
        b"qcow2 ",
        b"cluster ",
        b"glance ",
        b"zstd ",
        b"deflate ",
        b"disk\n",
    ];
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(words[(rng.next() % 8) as usize]);
    }
    out.truncate(len);
    out
}

pub fn sha256_file(path: &Path) -> String {
    let mut hasher = Sha256::new();
    let mut file = File::open(path).unwrap();
    std::io::copy(&mut file, &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A disk made of the given pieces: (offset, bytes); the rest are holes.
pub fn sparse_file(path: &Path, size: u64, pieces: &[(u64, Vec<u8>)]) {
    let file = File::create(path).unwrap();
    file.set_len(size).unwrap();
    for (offset, bytes) in pieces {
        file.write_all_at(bytes, *offset).unwrap();
    }
    file.sync_all().unwrap();
}

pub fn options(format: Format, compression: Compression, cluster_size: u32) -> CaptureOptions {
    CaptureOptions {
        format,
        compression,
        cluster_size,
        threads: 2,
        // No filesystem here: the planner would read the whole disk anyway,
        // and these tests are about the engine.
        skip_free_space: false,
        ..CaptureOptions::default()
    }
}

pub fn capture_file(source: &Path, out: &Path, options: &CaptureOptions) -> Result<Report> {
    snapshot_core::capture(
        source,
        &Target::File {
            path: out.to_owned(),
            force: false,
        },
        options,
        &NoProgress,
    )
}

/// A forward-only sink collecting the image in memory, like standard output.
#[derive(Clone, Default)]
pub struct VecSink(pub Arc<Mutex<Vec<u8>>>);

impl Sink for VecSink {
    fn seekable(&self) -> bool {
        false
    }

    fn write(&mut self, buf: &[u8]) -> Result<()> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(())
    }

    fn write_at(&mut self, _offset: u64, _buf: &[u8]) -> Result<()> {
        panic!("write_at on a forward-only sink");
    }

    fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }

    fn abort(self: Box<Self>) {
        self.0.lock().unwrap().clear();
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

/// Captures into a [`VecSink`] and returns the report and the bytes.
pub fn capture_vec(source: &Path, options: &CaptureOptions) -> Result<(Report, Vec<u8>)> {
    let sink = VecSink::default();
    let report = snapshot_core::capture_into(source, Box::new(sink.clone()), options, &NoProgress)?;
    let bytes = std::mem::take(&mut *sink.0.lock().unwrap());
    Ok((report, bytes))
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img must be installed to judge the images (Debian: qemu-utils)")
}

/// `qemu-img check`: no errors, no leaks.
pub fn check(image: &Path) {
    let out = qemu_img(&["check", "-f", "qcow2", image.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "qemu-img check {} failed ({}):\n{}{}",
        image.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qemu-img compare`: the image reads exactly as the source (not strict:
/// holes and written zeros are the same thing to a guest).
pub fn compare(source: &Path, image: &Path, format: &str) {
    let out = qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        format,
        source.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "qemu-img compare {} {} failed ({}):\n{}{}",
        source.display(),
        image.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qemu-img info --output=json` as a JSON value.
pub fn info(image: &Path) -> serde_json::Value {
    let out = qemu_img(&["info", "--output=json", image.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "qemu-img info failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn path_in(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}
