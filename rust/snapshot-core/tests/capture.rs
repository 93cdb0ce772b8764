//! End-to-end captures of real files, judged by qemu-img.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use common::*;
use snapshot_core::Phase;
use snapshot_core::{CaptureOptions, Compression, Error, Format, ProgressUpdate, Target};

const K64: u32 = 64 * 1024;
const M1: u32 = 1024 * 1024;

/// Random data, size not a multiple of any cluster size.
fn random_source(path: &Path) {
    let mut rng = Rng::new(1);
    std::fs::write(path, rng.bytes(3 * 1024 * 1024 + 12_345)).unwrap();
}

/// Incompressible from end to end (a whole number of clusters).
fn incompressible_source(path: &Path) {
    let mut rng = Rng::new(2);
    std::fs::write(path, rng.bytes(4 * 1024 * 1024)).unwrap();
}

/// Compressible text, random blocks, written zero runs and holes, with an
/// odd size and data straddling cluster boundaries.
fn mixed_source(path: &Path) {
    let mut rng = Rng::new(3);
    let size = 9 * 1024 * 1024 + 4096 + 17;
    let pieces = vec![
        (0, text(300_000, 1)),
        (300_000, vec![0u8; 200_000]), // written zeros
        (500_000, rng.bytes(70_000)),  // random, straddling clusters
        (1_048_576 + 65_536 * 3 + 100, text(5, 2)),
        // hole from ~1.3 MiB to 3 MiB
        (3 << 20, text(1 << 20, 3)),
        ((4 << 20) + 7, rng.bytes(65_536 * 2)),
        ((4 << 20) + 200_000, text(900_000, 4)),
        // hole, then data up to the very last byte
        (size - 70_000, text(70_000, 5)),
    ];
    sparse_file(path, size, &pieces);
}

type Maker = fn(&Path);

const SOURCES: [(&str, Maker); 3] = [
    ("random", random_source),
    ("incompressible", incompressible_source),
    ("mixed", mixed_source),
];

/// The matrix: every source, every compression, 64 KiB and 1 MiB clusters;
/// file output judged by qemu-img, forward-only output byte-identical to it
/// in one pass (spool) and in two (memory limit far below the data).
#[test]
fn matrix_of_sources_compressions_and_cluster_sizes() {
    let dirs = dirs();
    for (name, make) in SOURCES {
        let source = path_in(&dirs.source, name);
        make(&source);
        let source_sha = sha256_file(&source);
        for compression in [Compression::Zstd, Compression::Zlib, Compression::None] {
            for cluster in [K64, M1] {
                let label = format!("{name} {compression:?} {cluster}");
                let image = path_in(
                    &dirs.output,
                    &format!("{name}-{compression:?}-{cluster}.qcow2"),
                );
                let opts = options(Format::Qcow2, compression, cluster);
                let report =
                    capture_file(&source, &image, &opts).unwrap_or_else(|e| panic!("{label}: {e}"));
                check(&image);
                compare(&source, &image, "qcow2");
                let bytes = std::fs::read(&image).unwrap();
                assert_eq!(report.image_size, bytes.len() as u64, "{label}");
                assert_eq!(report.sha256, sha256(&bytes), "{label}");
                assert_eq!(report.passes, 1, "{label}");
                // qcow2 counts whole sectors: a partial last one is rounded up.
                assert_eq!(
                    report.virtual_size,
                    std::fs::metadata(&source)
                        .unwrap()
                        .len()
                        .next_multiple_of(512),
                    "{label}"
                );
                let info = info(&image);
                assert_eq!(info["format"], "qcow2");
                let expected_type = if compression == Compression::Zstd {
                    "zstd"
                } else {
                    "zlib"
                };
                assert_eq!(
                    info["format-specific"]["data"]["compression-type"], expected_type,
                    "{label}"
                );
                let counts = report.clusters;
                assert_eq!(
                    counts.zero + counts.compressed + counts.plain,
                    report.virtual_size.div_ceil(u64::from(cluster)),
                    "{label}"
                );
                if compression == Compression::None {
                    assert_eq!(counts.compressed, 0, "{label}");
                }
                if name == "incompressible" {
                    assert_eq!(counts.compressed, 0, "{label}: random data compressed?");
                }

                // Forward-only: everything spooled, one pass.
                let (spooled, stream) = capture_vec(&source, &opts).unwrap();
                assert_eq!(spooled.passes, 1, "{label}");
                assert!(
                    stream == bytes,
                    "{label}: forward-only output differs from the file"
                );
                assert_eq!(spooled.sha256, report.sha256, "{label}");
                assert_eq!(spooled.md5, report.md5, "{label}");
                assert_eq!(spooled.sha512, report.sha512, "{label}");

                // Forward-only, memory limit far below the data: two passes,
                // still the same bytes.
                let tight = CaptureOptions {
                    memory_limit: 64 * 1024,
                    ..opts.clone()
                };
                let (two, stream) = capture_vec(&source, &tight).unwrap();
                assert_eq!(two.passes, 2, "{label}");
                assert!(
                    stream == bytes,
                    "{label}: two-pass output differs from the file"
                );
                assert_eq!(two.sha512, report.sha512, "{label}");
                assert_eq!(two.bytes_read, 2 * report.bytes_read, "{label}");
                assert_eq!(
                    sha256_file(&source),
                    source_sha,
                    "{label}: the source changed"
                );
            }
        }
    }
}

/// Raw output: sparse to a file, zeros written to a forward-only sink;
/// both identical to the source.
#[test]
fn raw_images_equal_the_source() {
    let dirs = dirs();
    let source = path_in(&dirs.source, "mixed");
    mixed_source(&source);
    let source_bytes = std::fs::read(&source).unwrap();
    let image = path_in(&dirs.output, "mixed.raw");
    let opts = options(Format::Raw, Compression::Zstd, K64);
    let report = capture_file(&source, &image, &opts).unwrap();
    compare(&source, &image, "raw");
    let bytes = std::fs::read(&image).unwrap();
    assert!(bytes == source_bytes);
    assert_eq!(report.sha256, sha256(&source_bytes));
    assert_eq!(report.image_size, source_bytes.len() as u64);
    // Holes were left as holes.
    let allocated =
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&image).unwrap()) * 512;
    assert!(
        allocated < source_bytes.len() as u64 * 3 / 4,
        "raw output not sparse: {allocated} bytes allocated"
    );
    let (streamed, stream) = capture_vec(&source, &opts).unwrap();
    assert!(stream == source_bytes);
    assert_eq!(streamed.sha512, report.sha512);
}

/// A 64 GiB disk of nothing: SEEK_DATA makes it a matter of seconds.
#[test]
fn huge_sparse_all_zero_disk_is_fast() {
    let dirs = dirs();
    let source = path_in(&dirs.source, "empty");
    sparse_file(&source, 64 << 30, &[]);
    let image = path_in(&dirs.output, "empty.qcow2");
    let started = Instant::now();
    let report = capture_file(
        &source,
        &image,
        &options(Format::Qcow2, Compression::Zstd, K64),
    )
    .unwrap();
    let took = started.elapsed();
    assert!(took.as_secs() < 10, "64 GiB of holes took {took:?}");
    assert_eq!(report.bytes_read, 0);
    assert_eq!(report.clusters.zero, 1 << 20);
    assert_eq!(report.virtual_size, 64 << 30);
    check(&image);
    compare(&source, &image, "qcow2");
    // Header, L1 (1 MiB of guest clusters / 8192 per table = 128 entries,
    // one cluster) and one refcount block and table.
    assert_eq!(report.image_size, 4 * 65536);
    // The same through a forward-only sink.
    let (_, stream) =
        capture_vec(&source, &options(Format::Qcow2, Compression::Zstd, K64)).unwrap();
    assert!(stream == std::fs::read(&image).unwrap());
}

/// An empty (0-byte) source gives a valid empty image.
#[test]
fn empty_source() {
    let dirs = dirs();
    let source = path_in(&dirs.source, "nothing");
    std::fs::write(&source, b"").unwrap();
    let image = path_in(&dirs.output, "nothing.qcow2");
    let report = capture_file(
        &source,
        &image,
        &options(Format::Qcow2, Compression::Zstd, K64),
    )
    .unwrap();
    assert_eq!(report.virtual_size, 0);
    check(&image);
}

#[test]
fn existing_output_is_refused_and_kept() {
    let dirs = dirs();
    let source = path_in(&dirs.source, "random");
    random_source(&source);
    let image = path_in(&dirs.output, "exists.qcow2");
    std::fs::write(&image, b"precious").unwrap();
    let err = capture_file(
        &source,
        &image,
        &options(Format::Qcow2, Compression::Zstd, K64),
    )
    .unwrap_err();
    assert!(matches!(err, Error::OutputExists { .. }), "{err}");
    assert_eq!(std::fs::read(&image).unwrap(), b"precious");
    // With force it is replaced by a valid image.
    let target = Target::File {
        path: image.clone(),
        force: true,
    };
    snapshot_core::capture(
        &source,
        &target,
        &options(Format::Qcow2, Compression::Zstd, K64),
        &snapshot_core::NoProgress,
    )
    .unwrap();
    check(&image);
    compare(&source, &image, "qcow2");
}

/// A regular-file source refuses only itself as output (also through a hard
/// link); an image beside it, on the same filesystem, is what people do.
#[test]
fn only_the_source_itself_is_refused_as_output() {
    let dirs = dirs();
    let source = path_in(&dirs.source, "random");
    random_source(&source);
    let sha = sha256_file(&source);
    let image = path_in(&dirs.source, "beside-the-source.qcow2");
    capture_file(
        &source,
        &image,
        &options(Format::Qcow2, Compression::Zstd, K64),
    )
    .unwrap();
    check(&image);
    compare(&source, &image, "qcow2");
    // The source itself and a hard link to it, with force, are refused and
    // stay intact.
    let link = path_in(&dirs.source, "hard-link");
    std::fs::hard_link(&source, &link).unwrap();
    for output in [&source, &link] {
        let target = Target::File {
            path: output.clone(),
            force: true,
        };
        let err = snapshot_core::capture(
            &source,
            &target,
            &options(Format::Raw, Compression::None, K64),
            &snapshot_core::NoProgress,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                Error::OutputOnSource {
                    why: "is the source itself",
                    ..
                }
            ),
            "{err}"
        );
    }
    assert_eq!(sha256_file(&source), sha);
}

/// A panic unwinding through the capture (here from a progress reporter,
/// which is caller code) leaves no partial image behind.
#[test]
fn a_panic_leaves_no_partial_output() {
    struct Panics;
    impl snapshot_core::Progress for Panics {
        fn update(&self, update: &snapshot_core::ProgressUpdate) {
            if update.written > 0 {
                panic!("progress reporter failed");
            }
        }
    }
    let dirs = dirs();
    let source = path_in(&dirs.source, "mixed");
    mixed_source(&source);
    for format in [Format::Qcow2, Format::Raw] {
        let image = path_in(&dirs.output, "panicked.img");
        let target = Target::File {
            path: image.clone(),
            force: false,
        };
        let outcome = std::panic::catch_unwind(|| {
            snapshot_core::capture(
                &source,
                &target,
                &options(format, Compression::Zstd, K64),
                &Panics,
            )
        });
        assert!(outcome.is_err(), "the reporter did not panic");
        assert!(
            !image.exists(),
            "partial {format:?} output survived a panic"
        );
    }
}

/// Cancelling from the progress callback stops the capture and removes the
/// partial output.
#[test]
fn cancel_removes_partial_output() {
    let dirs = dirs();
    let source = path_in(&dirs.source, "mixed");
    mixed_source(&source);
    let image = path_in(&dirs.output, "cancelled.qcow2");
    let cancel = Arc::new(AtomicBool::new(false));
    let opts = CaptureOptions {
        cancel: Some(cancel.clone()),
        ..options(Format::Qcow2, Compression::Zstd, K64)
    };
    let flag = cancel.clone();
    let progress = move |update: &ProgressUpdate| {
        if update.phase == Phase::Writing && update.done > 0 {
            flag.store(true, Ordering::Relaxed);
        }
    };
    let target = Target::File {
        path: image.clone(),
        force: false,
    };
    let err = snapshot_core::capture(&source, &target, &opts, &progress).unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert!(!image.exists(), "partial output left behind");
}

/// A source truncated while being read fails with ShortRead, and the
/// partial output is removed.
#[test]
fn truncated_source_is_a_short_read() {
    let dirs = dirs();
    let source = path_in(&dirs.source, "shrinking");
    let mut rng = Rng::new(9);
    std::fs::write(&source, rng.bytes(32 << 20)).unwrap();
    let image = path_in(&dirs.output, "short.qcow2");
    let victim = source.clone();
    let progress = move |update: &ProgressUpdate| {
        if update.phase == Phase::Writing && update.done > 0 {
            // Cut the source in half behind the reader's back.
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .open(&victim)
                .and_then(|f| f.set_len(16 << 20));
        }
    };
    let target = Target::File {
        path: image.clone(),
        force: false,
    };
    let opts = CaptureOptions {
        threads: 1,
        ..options(Format::Qcow2, Compression::None, K64)
    };
    let err = snapshot_core::capture(&source, &target, &opts, &progress).unwrap_err();
    assert!(matches!(err, Error::ShortRead { .. }), "{err}");
    assert!(!image.exists(), "partial output left behind");
}

/// A source that changes between the two passes of a forward-only capture
/// is detected.
#[test]
fn source_changing_between_passes_is_detected() {
    let dirs = dirs();
    let source = path_in(&dirs.source, "changing");
    std::fs::write(&source, text(16 << 20, 7)).unwrap();
    let victim = source.clone();
    let seen_sizing = AtomicBool::new(false);
    let changed = AtomicBool::new(false);
    let progress = move |update: &ProgressUpdate| {
        if update.phase == Phase::Sizing {
            seen_sizing.store(true, Ordering::Relaxed);
        } else if update.phase == Phase::Writing
            && seen_sizing.load(Ordering::Relaxed)
            && !changed.swap(true, Ordering::Relaxed)
        {
            // Pass 2 has begun: change data near the end, not read yet.
            use std::os::unix::fs::FileExt;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&victim)
                .unwrap();
            file.write_all_at(b"changed behind the engine's back", (16 << 20) - 100_000)
                .unwrap();
        }
    };
    let sink = VecSink::default();
    let opts = CaptureOptions {
        // Holds the metadata of 16 MiB (a few KiB), nothing to spool.
        memory_limit: 64 * 1024,
        ..options(Format::Qcow2, Compression::Zstd, K64)
    };
    let err =
        snapshot_core::capture_into(&source, Box::new(sink.clone()), &opts, &progress).unwrap_err();
    assert!(matches!(err, Error::SourceChanged { .. }), "{err}");
}

/// The memory limit of a stream holds the image's metadata too: a limit
/// below it is refused before the disk is read, naming the minimum; the
/// minimum is enough (nothing left to spool: two passes), and with room for
/// the buffers too the image is spooled.
#[test]
fn memory_limit_must_hold_the_metadata() {
    let dirs = dirs();
    let source = path_in(&dirs.source, "spread");
    // 16 GiB with 4 KiB of data in every 512 MiB: 32 clusters of data in
    // 32 L2 tables of 64 KiB clusters, about 2 MiB of metadata.
    let pieces: Vec<_> = (0..32u64)
        .map(|n| (n * (512 << 20) + 4096 * n, text(4096, n)))
        .collect();
    sparse_file(&source, 16 << 30, &pieces);
    let opts = |limit: u64| CaptureOptions {
        memory_limit: limit,
        ..options(Format::Qcow2, Compression::Zstd, K64)
    };
    for limit in [0, 1 << 20, 2 << 20] {
        let phases = std::sync::Mutex::new(Vec::new());
        let progress = |update: &ProgressUpdate| phases.lock().unwrap().push(update.phase);
        let err = snapshot_core::capture_into(
            &source,
            Box::new(VecSink::default()),
            &opts(limit),
            &progress,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidOption {
                    option: "--memory-limit",
                    ..
                }
            ),
            "{err}"
        );
        let message = err.to_string();
        assert!(message.contains("give at least 3M"), "{message}");
        assert!(message.contains("--cluster-size"), "{message}");
        let phases = phases.into_inner().unwrap();
        assert!(
            phases.iter().all(|phase| *phase == Phase::Scanning),
            "{limit}: read the disk before refusing: {phases:?}"
        );
    }
    // A file needs no spool: the limit does not apply to it.
    let image = path_in(&dirs.output, "spread.qcow2");
    let file = capture_file(&source, &image, &opts(1 << 20)).unwrap();
    check(&image);
    compare(&source, &image, "qcow2");
    let (two, bytes) = capture_vec(&source, &opts(3 << 20)).unwrap();
    assert_eq!(two.passes, 2);
    assert!(bytes == std::fs::read(&image).unwrap());
    assert_eq!(two.sha256, file.sha256);
    let (one, bytes) = capture_vec(&source, &opts(256 << 20)).unwrap();
    assert_eq!(one.passes, 1);
    assert_eq!(sha256(&bytes), file.sha256);
}

#[test]
fn invalid_options_are_refused_before_reading() {
    let dirs = dirs();
    let source = path_in(&dirs.source, "random");
    random_source(&source);
    let image = path_in(&dirs.output, "never.qcow2");
    for (opts, option) in [
        (
            CaptureOptions {
                cluster_size: 4096,
                ..CaptureOptions::default()
            },
            "--cluster-size",
        ),
        (
            CaptureOptions {
                cluster_size: 3 << 16,
                ..CaptureOptions::default()
            },
            "--cluster-size",
        ),
        (
            CaptureOptions {
                cluster_size: 4 << 20,
                ..CaptureOptions::default()
            },
            "--cluster-size",
        ),
        (
            CaptureOptions {
                level: Some(99),
                ..CaptureOptions::default()
            },
            "--level",
        ),
        (
            CaptureOptions {
                compression: Compression::Zlib,
                level: Some(0),
                ..CaptureOptions::default()
            },
            "--level",
        ),
    ] {
        let err = capture_file(&source, &image, &opts).unwrap_err();
        assert!(
            matches!(err, Error::InvalidOption { option: o, .. } if o == option),
            "{err}"
        );
        assert!(!image.exists());
    }
    let err = capture_file(
        Path::new("/nonexistent/disk"),
        &image,
        &CaptureOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::SourceNotFound { .. }), "{err}");
}

/// Progress reaches the whole disk while writing, then follows the image
/// as it is read back for its digests.
#[test]
fn progress_is_reported() {
    let dirs = dirs();
    let source = path_in(&dirs.source, "mixed");
    mixed_source(&source);
    let image = path_in(&dirs.output, "progress.qcow2");
    let last_writing = std::sync::Mutex::new(None::<ProgressUpdate>);
    let last = std::sync::Mutex::new(None::<ProgressUpdate>);
    let phases = std::sync::Mutex::new(Vec::new());
    let progress = |update: &ProgressUpdate| {
        let mut p = phases.lock().unwrap();
        if p.last() != Some(&update.phase) {
            p.push(update.phase);
        }
        if update.phase == Phase::Writing {
            *last_writing.lock().unwrap() = Some(update.clone());
        }
        *last.lock().unwrap() = Some(update.clone());
    };
    let target = Target::File {
        path: image.clone(),
        force: false,
    };
    let report = snapshot_core::capture(
        &source,
        &target,
        &options(Format::Qcow2, Compression::Zstd, K64),
        &progress,
    )
    .unwrap();
    assert_eq!(
        *phases.lock().unwrap(),
        vec![Phase::Scanning, Phase::Writing, Phase::Digesting]
    );
    let writing = last_writing.lock().unwrap().clone().unwrap();
    assert_eq!(writing.total, std::fs::metadata(&source).unwrap().len());
    assert_eq!(writing.done, writing.total);
    assert_eq!(writing.written, report.image_size);
    let last = last.lock().unwrap().clone().unwrap();
    assert_eq!(last.total, report.image_size);
    assert_eq!(last.done, last.total);
    assert_eq!(last.written, report.image_size);
    assert!(last.written > 0);
}

/// Free-space skipping on a real ext4 filesystem whose free blocks hold
/// garbage: the image is small, and the filesystem in it is intact (e2fsck)
/// with every file byte for byte.
#[test]
fn ext4_free_space_is_skipped_and_the_filesystem_survives() {
    use std::process::Command;
    let dirs = dirs();
    let files = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(11);
    let payload = rng.bytes(3 << 20);
    std::fs::write(files.path().join("random.bin"), &payload).unwrap();
    std::fs::write(files.path().join("notes.txt"), text(500_000, 12)).unwrap();
    let source = path_in(&dirs.source, "ext4.img");
    // Garbage everywhere first, as on a disk that was used before.
    std::fs::write(&source, rng.bytes(64 << 20)).unwrap();
    let mkfs = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-E",
            "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
            "-d",
        ])
        .arg(files.path())
        .arg(&source)
        .output()
        .expect("mkfs.ext4 must be installed (Debian: e2fsprogs)");
    assert!(
        mkfs.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&mkfs.stderr)
    );
    let source_sha = sha256_file(&source);

    let image = path_in(&dirs.output, "ext4.qcow2");
    let opts = CaptureOptions {
        skip_free_space: true,
        ..options(Format::Qcow2, Compression::Zstd, K64)
    };
    let report = capture_file(&source, &image, &opts).unwrap();
    check(&image);
    assert_eq!(sha256_file(&source), source_sha, "the source changed");
    assert!(
        !report.partitions.is_empty(),
        "no filesystem recognised: {:?}",
        report.partitions
    );
    assert!(
        report.bytes_read < 32 << 20,
        "free space was read: {} bytes",
        report.bytes_read
    );
    assert!(
        report.image_size < 16 << 20,
        "free space was stored: {} bytes",
        report.image_size
    );

    // The filesystem in the image is consistent and holds the same files.
    let raw = path_in(&dirs.output, "ext4.raw");
    let convert = Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&image)
        .arg(&raw)
        .output()
        .unwrap();
    assert!(
        convert.status.success(),
        "{}",
        String::from_utf8_lossy(&convert.stderr)
    );
    let fsck = Command::new("e2fsck")
        .args(["-fn"])
        .arg(&raw)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn on the captured filesystem: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let cat = Command::new("debugfs")
        .args(["-R", "cat /random.bin"])
        .arg(&raw)
        .output()
        .unwrap();
    assert!(cat.stdout == payload, "random.bin differs in the image");
}
