//! The capture entry point: source -> plan -> pipeline -> layout -> sink.
//!
//! This module holds the orchestration: checking options, opening the
//! source and the sink, scanning for the clusters worth reading, running the
//! pipeline and building the report. How the image's bytes reach the sink
//! is a write strategy, one per file, all producing the same bytes for the
//! same source:
//!
//! - [`seekable`]: qcow2 to a seekable sink (a file), in one pass.
//! - [`spooled`]: qcow2 to a forward-only sink (standard output, an upload),
//!   the compressed data held in a [`Spool`] until the header is known.
//! - [`two_pass`]: what [`spooled`] falls back to when the data outgrows the
//!   spool: the source is read and compressed a second time.
//! - [`raw`]: the disk byte for byte.
//!
//! [`Emitter`] carries the emitted bytes to the sink and the digests for all
//! of them.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crate::digest::Digests;
use crate::error::{Error, Result};
use crate::fs::{self, DiskPlan};
use crate::options::{CaptureOptions, Compression, Format, Target};
use crate::pipeline::{self, Batch, Input, Settings, Stored};
use crate::progress::{Phase, Progress, ProgressUpdate};
use crate::qcow2::{self, Emit, Layout, Packer};
use crate::report::{ClusterCounts, Report};
use crate::sink::{FileSink, Sink, StdoutSink};
use crate::source::{self, Source};

mod emitter;
mod raw;
mod seekable;
mod spool;
mod spooled;
mod two_pass;

use emitter::Emitter;
use raw::Raw;
use seekable::Seekable;
use spool::Spool;
use spooled::Spooled;

/// Bytes per piece of emitted image handed to the sink and the digests.
const CHUNK: usize = 4 * 1024 * 1024;

/// One way to write the image of a scanned disk into a sink.
///
/// A trait rather than a match over modes inside one writer, so that each
/// strategy keeps its own state and its own file; every strategy must emit
/// the same bytes for the same source as the others of its format (the
/// tests compare them).
trait Strategy {
    /// Writes the image of the clusters of `scan` into `sink` and says what
    /// came out. The sink is neither finished nor aborted here: [`run`]
    /// does either.
    fn write(&self, job: &Job<'_>, scan: &Scan, sink: &mut dyn Sink) -> Result<Outcome>;
}

/// Captures the disk at `source` (a block device or a regular file, opened
/// read-only) into `target` as `options` say, reporting progress to
/// `progress`, and returns the report of the emitted image.
///
/// Errors: invalid options ([`Error::InvalidOption`]), source problems
/// ([`Error::SourceNotFound`], [`Error::SourceRead`], [`Error::ShortRead`],
/// [`Error::SourceChanged`]...), output problems ([`Error::OutputExists`],
/// [`Error::OutputOnSource`], [`Error::OutputWrite`]), and
/// [`Error::Cancelled`]. On any error the output is removed (file).
pub fn capture(
    source: &Path,
    target: &Target,
    options: &CaptureOptions,
    progress: &dyn Progress,
) -> Result<Report> {
    capture_with(
        source,
        |disk| {
            Ok(match target {
                Target::File { path, force } => {
                    source::check_output(path, disk)?;
                    Box::new(FileSink::create(path, *force)?)
                }
                Target::Stdout => Box::new(StdoutSink::new()?),
            })
        },
        options,
        progress,
    )
}

/// Captures the disk at `source` into the sink `open_sink` gives once the
/// options are checked and the source is open (so that a bad option or a
/// missing disk fails before any output exists or any service is asked),
/// and returns the report of the emitted image.
///
/// This is how sinks from other crates (Glance in `snapshot-openstack`)
/// run; errors are those of [`capture`] plus whatever `open_sink` and the
/// sink return. On any error after the sink was opened it is aborted.
pub fn capture_with(
    source: &Path,
    open_sink: impl FnOnce(&Source) -> Result<Box<dyn Sink>>,
    options: &CaptureOptions,
    progress: &dyn Progress,
) -> Result<Report> {
    let started = Instant::now();
    let settings = validate(options)?;
    let disk = Source::open(source)?;
    let sink = open_sink(&disk)?;
    run(&disk, sink, &settings, options, progress, started).map(|(report, _)| report)
}

/// Captures the disk at `source` into a caller-provided sink: the same as
/// [`capture`] for sinks of your own (tests, other storage). A seekable sink
/// must implement [`Sink::read_at`] and [`Sink::set_len`].
pub fn capture_into(
    source: &Path,
    sink: Box<dyn Sink>,
    options: &CaptureOptions,
    progress: &dyn Progress,
) -> Result<Report> {
    let started = Instant::now();
    let settings = validate(options)?;
    let disk = match Source::open(source) {
        Ok(disk) => disk,
        Err(err) => {
            sink.abort();
            return Err(err);
        }
    };
    run(&disk, sink, &settings, options, progress, started).map(|(report, _)| report)
}

/// Checks `options` as [`capture`] does before it opens anything: cluster
/// size, compression level for the method, thread count.
///
/// For front ends that must refuse bad options before something expensive
/// happens elsewhere (the snapshot client checks them before it shuts a
/// node down): one set of rules, the engine's.
///
/// Errors: [`Error::InvalidOption`] naming the option and what to use.
pub fn check_options(options: &CaptureOptions) -> Result<()> {
    validate(options).map(|_| ())
}

/// Checks options and resolves defaults into pipeline settings.
fn validate(options: &CaptureOptions) -> Result<Settings> {
    let cs = options.cluster_size;
    if !cs.is_power_of_two() || !(qcow2::MIN_CLUSTER_SIZE..=qcow2::MAX_CLUSTER_SIZE).contains(&cs) {
        return Err(Error::InvalidOption {
            option: "--cluster-size",
            reason: format!(
                "{cs} is not a power of two from 64K to 2M: use 64K, 128K, 256K, 512K, 1M or 2M"
            ),
        });
    }
    let compression = match options.format {
        Format::Qcow2 => options.compression,
        // Raw images are never compressed; workers only look for zeros.
        Format::Raw => Compression::None,
    };
    let level = options.level.unwrap_or_else(|| compression.default_level());
    match compression {
        Compression::Zstd => {
            let range = zstd::compression_level_range();
            if !range.contains(&level) || level == 0 {
                return Err(Error::InvalidOption {
                    option: "--level",
                    reason: format!(
                        "zstd level {level} is out of range: use 1 to {} (or negative for faster)",
                        range.end()
                    ),
                });
            }
        }
        Compression::Zlib if !(1..=9).contains(&level) => {
            return Err(Error::InvalidOption {
                option: "--level",
                reason: format!("zlib level {level} is out of range: use 1 to 9"),
            });
        }
        _ => {}
    }
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n if n > 1024 => {
            return Err(Error::InvalidOption {
                option: "--threads",
                reason: format!("{n} threads is too many: use 0 (one per core) up to 1024"),
            });
        }
        n => n,
    };
    Ok(Settings {
        cluster_size: cs,
        compression,
        level: if compression == Compression::None {
            0
        } else {
            level
        },
        threads,
        checksums: false,
    })
}

/// Runs a capture into an open sink; aborts the sink on any error.
fn run(
    disk: &Source,
    mut sink: Box<dyn Sink>,
    settings: &Settings,
    options: &CaptureOptions,
    progress: &dyn Progress,
    started: Instant,
) -> Result<(Report, Digests)> {
    let target = sink.describe();
    tracing::info!(
        source = %disk.path().display(),
        size = disk.size(),
        target = %target,
        format = ?options.format,
        compression = ?settings.compression,
        level = settings.level,
        cluster_size = settings.cluster_size,
        threads = settings.threads,
        memory_limit = options.memory_limit,
        skip_free_space = options.skip_free_space,
        "Capture started"
    );
    let job = Job {
        disk,
        settings: settings.clone(),
        options,
        progress,
        cancel: options.cancel.as_deref(),
        bytes_read: AtomicU64::new(0),
    };
    match job.write(sink.as_mut()) {
        Ok(outcome) => {
            // A file whose final sync fails removes itself.
            sink.finish()?;
            let report = Report {
                virtual_size: outcome.virtual_size,
                image_size: outcome.image_size,
                bytes_read: job.bytes_read.load(Ordering::Relaxed),
                sha256: outcome.digests.sha256.clone(),
                sha512: outcome.digests.sha512.clone(),
                md5: outcome.digests.md5.clone(),
                seconds: started.elapsed().as_secs_f64(),
                format: options.format,
                compression: settings.compression,
                level: settings.level,
                cluster_size: settings.cluster_size,
                passes: outcome.passes,
                clusters: outcome.clusters,
                target,
                tool_version: crate::VERSION.to_owned(),
                partitions: outcome.partitions,
            };
            tracing::info!(
                image_size = report.image_size,
                bytes_read = report.bytes_read,
                seconds = report.seconds,
                passes = report.passes,
                zero = report.clusters.zero,
                compressed = report.clusters.compressed,
                plain = report.clusters.plain,
                sha256 = %report.sha256,
                "Capture finished"
            );
            Ok((report, outcome.digests))
        }
        Err(err) => {
            tracing::warn!(error = %err, target = %target, "Capture failed; abandoning the output");
            sink.abort();
            Err(err)
        }
    }
}

/// What a finished write produced.
struct Outcome {
    virtual_size: u64,
    image_size: u64,
    digests: Digests,
    passes: u32,
    clusters: ClusterCounts,
    partitions: Vec<fs::PartitionReport>,
}

/// One capture's shared state.
struct Job<'a> {
    disk: &'a Source,
    settings: Settings,
    options: &'a CaptureOptions,
    progress: &'a dyn Progress,
    cancel: Option<&'a AtomicBool>,
    bytes_read: AtomicU64,
}

/// The parts of the disk to read.
struct Scan {
    runs: Vec<std::ops::Range<u64>>,
    /// A plan to mask reads with, when it leaves out parts of clusters.
    plan: Option<DiskPlan>,
    partitions: Vec<fs::PartitionReport>,
}

impl Scan {
    /// Clusters to read: at most that many are stored.
    fn clusters(&self) -> u64 {
        self.runs.iter().map(|r| r.end - r.start).sum()
    }
}

impl Job<'_> {
    /// Fails with [`Error::Cancelled`] once the caller asked to stop.
    fn cancelled(&self) -> Result<()> {
        if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Reports progress through the disk: `done` of its bytes read,
    /// `written` image bytes emitted.
    fn update(&self, phase: Phase, done: u64, written: u64) {
        self.progress.update(&ProgressUpdate {
            phase,
            done: done.min(self.disk.size()),
            total: self.disk.size(),
            written,
        });
    }

    /// Reports progress through the image itself: `done` of `total` image
    /// bytes sent or digested, `written` of them emitted.
    fn update_image(&self, phase: Phase, done: u64, total: u64, written: u64) {
        self.progress.update(&ProgressUpdate {
            phase,
            done: done.min(total),
            total,
            written,
        });
    }

    /// Finds the clusters worth reading: data of a sparse file (holes are
    /// zeros), intersected with the free-space plan when asked for.
    fn scan(&self) -> Result<Scan> {
        self.update(Phase::Scanning, 0, 0);
        let size = self.disk.size();
        let data = self.disk.data_ranges()?;
        let (ranges, plan, partitions) = if self.options.skip_free_space && size > 0 {
            let plan = fs::plan(self.disk.file(), size);
            let ranges = source::intersect(&data, &plan.ranges);
            let partitions = plan.partitions.clone();
            let whole = plan.ranges.len() == 1 && plan.ranges[0] == (0..size);
            (ranges, (!whole).then_some(plan), partitions)
        } else {
            (data, None, Vec::new())
        };
        let runs = pipeline::cluster_runs(&ranges, u64::from(self.settings.cluster_size));
        let to_read: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        tracing::debug!(
            ranges = ranges.len(),
            runs = runs.len(),
            bytes_to_read = to_read,
            "Scanned the source"
        );
        Ok(Scan {
            runs,
            plan,
            partitions,
        })
    }

    /// Reads, checks and compresses the clusters of `scan` with
    /// `settings`, handing every batch, in disk order, to `consume`.
    fn pipeline(
        &self,
        scan: &Scan,
        settings: &Settings,
        consume: &mut dyn FnMut(&Batch) -> Result<()>,
    ) -> Result<()> {
        let input = Input {
            source: self.disk,
            runs: &scan.runs,
            mask: scan.plan.as_ref(),
            cancel: self.cancel,
            bytes_read: &self.bytes_read,
        };
        pipeline::run(&input, settings, consume)
    }

    /// Writes the image with the strategy its format and its sink call for.
    fn write(&self, sink: &mut dyn Sink) -> Result<Outcome> {
        let scan = self.scan()?;
        self.cancelled()?;
        let mut outcome = match (self.options.format, sink.seekable()) {
            (Format::Qcow2, true) => Seekable.write(self, &scan, sink)?,
            (Format::Qcow2, false) => Spooled.write(self, &scan, sink)?,
            (Format::Raw, seekable) => Raw { sparse: seekable }.write(self, &scan, sink)?,
        };
        outcome.partitions = scan.partitions;
        Ok(outcome)
    }

    /// Feeds one batch to the packer, counting clusters.
    fn pack(
        &self,
        batch: &Batch,
        packer: &mut Packer,
        out: &mut dyn Emit,
        counts: &mut ClusterCounts,
    ) -> Result<()> {
        let cs = self.settings.cluster_size as usize;
        for (n, stored) in batch.stored.iter().enumerate() {
            let guest = batch.first + n as u64;
            match *stored {
                Stored::Zero => counts.zero += 1,
                Stored::Compressed { start, len } => {
                    counts.compressed += 1;
                    packer.compressed(
                        guest,
                        &batch.out[start as usize..(start + len) as usize],
                        out,
                    )?;
                }
                Stored::Plain => {
                    counts.plain += 1;
                    packer.plain(guest, &batch.data[n * cs..(n + 1) * cs], out)?;
                }
            }
        }
        Ok(())
    }

    /// Packs one batch into an image being emitted and reports how far
    /// writing got.
    fn write_batch(
        &self,
        batch: &Batch,
        packer: &mut Packer,
        out: &mut Emitter<'_>,
        counts: &mut ClusterCounts,
    ) -> Result<()> {
        self.pack(batch, packer, out, counts)?;
        let cs = u64::from(self.settings.cluster_size);
        self.update(
            Phase::Writing,
            (batch.first + batch.count as u64) * cs,
            out.written(),
        );
        Ok(())
    }

    /// Clusters of the guest disk, the last one possibly partial.
    fn guest_clusters(&self) -> u64 {
        self.disk
            .size()
            .div_ceil(u64::from(self.settings.cluster_size))
    }

    /// A fresh layout, with room for the reference counts of every
    /// cluster of the scan.
    fn layout(&self, scan: &Scan) -> Layout {
        let mut layout = Layout::new(
            self.settings.cluster_size,
            self.disk.size(),
            self.settings.compression,
        );
        layout.reserve(scan.clusters());
        layout
    }

    /// Counts the clusters never read (holes, free space) as zero.
    fn count_unread(&self, counts: &mut ClusterCounts) {
        counts.zero = self.guest_clusters() - counts.compressed - counts.plain;
    }
}
