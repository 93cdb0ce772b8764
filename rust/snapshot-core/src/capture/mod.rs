//! The capture entry point: source -> plan -> pipeline -> layout -> sink.
//!
//! Three ways to write, all producing the same bytes for the same source:
//!
//! - qcow2 to a seekable sink (a file): one pass; the data area is written
//!   after a placeholder cluster 0, then the metadata, then the header over
//!   the placeholder; the digests come from reading the image back.
//! - qcow2 to a forward-only sink (standard output, Glance): the header must
//!   come first and depends on the size of everything, so the compressed
//!   data is spooled in memory and emitted once the layout is known: in what
//!   `memory_limit` leaves once the metadata (bounded before the disk is
//!   read) and the buffers are counted. Past that, the first pass only sizes
//!   the image (keeping a CRC-32 per stored cluster) and a second pass reads
//!   and compresses again (deterministic) while emitting, placing every
//!   cluster again over the first pass's layout and checking its CRC and its
//!   place: a difference means the source changed.
//! - raw: the disk byte for byte; holes are left in a seekable sink and
//!   written as zeros to a forward-only one.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crate::digest::{Digester, Digests, Piece, Recycler};
use crate::error::{Error, Result};
use crate::fs::{self, DiskPlan};
use crate::options::{CaptureOptions, Compression, Format, Target};
use crate::pipeline::{self, Batch, Input, Settings, Stored};
use crate::progress::{Phase, Progress, ProgressUpdate};
use crate::qcow2::{self, Emit, Layout, Packer};
use crate::report::{ClusterCounts, Report};
use crate::sink::{FileSink, Sink, StdoutSink};
use crate::size::format_size;
use crate::source::{self, Source};

/// Bytes per piece of emitted image handed to the sink and the digests.
const CHUNK: usize = 4 * 1024 * 1024;

/// Most bytes the emitter of a stream holds besides the spool: the pieces
/// the hash threads may still read (kept for reuse), the piece being
/// filled, the piece of zeros, the plain clusters the packer lets wait for
/// a cluster boundary, and the header (at most one 2 MiB cluster).
const EMIT_BUFFERS: u64 = (crate::digest::RECYCLE as u64 + 2) * CHUNK as u64
    + qcow2::PENDING_BYTES
    + qcow2::MAX_CLUSTER_SIZE as u64;

/// Captures the disk at `source` (a block device or a regular file, opened
/// read-only) into `target` as `options` say, reporting progress to
/// `progress`, and returns the report of the emitted image.
///
/// For [`Target::Glance`] the image is uploaded into the given queued image
/// and then checked against the size and digests Glance reports.
///
/// Errors: invalid options ([`Error::InvalidOption`]), source problems
/// ([`Error::SourceNotFound`], [`Error::SourceRead`], [`Error::ShortRead`],
/// [`Error::SourceChanged`]...), output problems ([`Error::OutputExists`],
/// [`Error::OutputOnSource`], [`Error::OutputWrite`]), upload and
/// verification errors, and [`Error::Cancelled`]. On any error the output is
/// removed (file) or broken off (upload).
pub fn capture(
    source: &Path,
    target: &Target,
    options: &CaptureOptions,
    progress: &dyn Progress,
) -> Result<Report> {
    let started = Instant::now();
    let settings = validate(options)?;
    let disk = Source::open(source)?;
    let sink: Box<dyn Sink> = match target {
        Target::File { path, force } => {
            source::check_output(path, &disk)?;
            Box::new(FileSink::create(path, *force)?)
        }
        Target::Stdout => Box::new(StdoutSink::new()?),
        Target::Glance(glance) => Box::new(crate::sink::glance::open(glance)?),
    };
    let (report, digests) = run(&disk, sink, &settings, options, progress, started)?;
    if let Target::Glance(glance) = target {
        progress.update(&ProgressUpdate {
            phase: Phase::Verifying,
            done: report.virtual_size,
            total: report.virtual_size,
            written: report.image_size,
        });
        crate::sink::glance::verify(glance, &digests, report.image_size)?;
        tracing::info!(image_id = %glance.image_id, "Glance holds exactly the image that was sent");
    }
    Ok(report)
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
    fn cancelled(&self) -> Result<()> {
        if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

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

    fn write(&self, sink: &mut dyn Sink) -> Result<Outcome> {
        let scan = self.scan()?;
        self.cancelled()?;
        let mut outcome = match (self.options.format, sink.seekable()) {
            (Format::Qcow2, true) => self.qcow2_seekable(&scan, sink)?,
            (Format::Qcow2, false) => self.qcow2_forward(&scan, sink)?,
            (Format::Raw, seekable) => self.raw(&scan, sink, seekable)?,
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
            out.written,
        );
        Ok(())
    }

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

    /// The bytes of compressed data a stream may spool: what the memory
    /// limit leaves once everything else the capture holds is counted. That
    /// is the layout's metadata and a CRC-32 per cluster (both grow with the
    /// data, bounded from the scan before the disk is read), and the
    /// buffers of the workers, the emitter and the sink (fixed by the
    /// settings). A limit below the metadata is refused: it can only grow.
    /// Between the metadata and the metadata plus the buffers, nothing is
    /// spooled (the disk is read twice) and the buffers are the excess.
    fn spool_budget(&self, scan: &Scan, settings: &Settings, sink: &dyn Sink) -> Result<u64> {
        let cs = self.settings.cluster_size;
        let clusters = scan.clusters();
        let bound = qcow2::memory_bound(cs, self.disk.size(), &scan.runs);
        let metadata = bound.layout + clusters * 4;
        let buffers =
            pipeline::memory_bound(settings)? + EMIT_BUFFERS + sink.buffer_bytes() + bound.emit;
        let limit = self.options.memory_limit;
        if limit < metadata {
            return Err(Error::InvalidOption {
                option: "--memory-limit",
                reason: format!(
                    "{} cannot hold the metadata of this image: the L2 tables, reference counts and checksums of up to {clusters} clusters of {} of this {} disk take {}; give at least {}M, or a bigger --cluster-size (less metadata)",
                    format_size(limit),
                    format_size(u64::from(cs)),
                    format_size(self.disk.size()),
                    format_size(metadata),
                    metadata.div_ceil(1 << 20),
                ),
            });
        }
        let spool = limit.saturating_sub(metadata + buffers);
        tracing::info!(
            memory_limit = limit,
            metadata,
            buffers,
            spool,
            "Memory of the stream: metadata and buffers, the rest for compressed data"
        );
        if spool == 0 {
            tracing::warn!(
                memory_limit = limit,
                needed = metadata + buffers,
                "The memory limit leaves no room to spool compressed data: the disk is read twice"
            );
        }
        Ok(spool)
    }

    /// Counts the clusters never read (holes, free space) as zero.
    fn count_unread(&self, counts: &mut ClusterCounts) {
        counts.zero = self.guest_clusters() - counts.compressed - counts.plain;
    }

    fn qcow2_seekable(&self, scan: &Scan, sink: &mut dyn Sink) -> Result<Outcome> {
        let cs = u64::from(self.settings.cluster_size);
        let mut out = Emitter::new(Dest::Sink(&mut *sink), None);
        // Cluster 0 holds the header, written last.
        out.emit_zeros(cs)?;
        let mut packer = Packer::new(self.layout(scan));
        let mut counts = ClusterCounts::default();
        self.pipeline(scan, &self.settings, &mut |batch| {
            self.write_batch(batch, &mut packer, &mut out, &mut counts)
        })?;
        self.cancelled()?;
        let layout = packer.finish(&mut out)?;
        layout.emit_metadata(&mut out)?;
        out.flush()?;
        let image_size = out.written;
        self.update(Phase::Writing, self.disk.size(), image_size);
        drop(out);
        debug_assert_eq!(image_size, layout.image_size());
        sink.write_at(0, &layout.header())?;
        self.count_unread(&mut counts);
        tracing::debug!(image_size, "Image written; reading it back for its digests");
        let digests = self.digest_back(sink, image_size)?;
        Ok(Outcome {
            virtual_size: layout.virtual_size(),
            image_size,
            digests,
            passes: 1,
            clusters: counts,
            partitions: Vec::new(),
        })
    }

    /// Digests what a seekable sink holds, by reading it back.
    fn digest_back(&self, sink: &mut dyn Sink, size: u64) -> Result<Digests> {
        let mut digester = Digester::new()?;
        let mut recycler = Recycler::default();
        let mut offset = 0u64;
        while offset < size {
            self.cancelled()?;
            let len = (size - offset).min(CHUNK as u64) as usize;
            let mut buf = recycler.take(CHUNK);
            buf.resize(len, 0);
            sink.read_at(offset, &mut buf)?;
            let buf = Arc::new(buf);
            digester.update(Piece::new(buf.clone(), len))?;
            recycler.keep(buf);
            offset += len as u64;
            self.update_image(Phase::Digesting, offset, size, size);
        }
        digester.finish()
    }

    fn qcow2_forward(&self, scan: &Scan, sink: &mut dyn Sink) -> Result<Outcome> {
        let cs = u64::from(self.settings.cluster_size);
        let settings = Settings {
            checksums: true,
            ..self.settings.clone()
        };
        let budget = self.spool_budget(scan, &settings, &*sink)?;
        // Pass 1: compress, spooling the data area while it fits the memory
        // limit, and keep a CRC-32 of every stored cluster in case it does not.
        let mut spool = Emitter::new(
            Dest::Spool {
                chunks: Vec::new(),
                limit: budget,
            },
            None,
        );
        spool.written = cs; // the data area starts after the header cluster
        let mut packer = Packer::new(self.layout(scan));
        let mut counts = ClusterCounts::default();
        // At most one per cluster read: reserved at once, as counted.
        let mut crcs: Vec<u32> = Vec::with_capacity(scan.clusters() as usize);
        self.pipeline(scan, &settings, &mut |batch| {
            crcs.extend_from_slice(&batch.crcs);
            self.pack(batch, &mut packer, &mut spool, &mut counts)?;
            let phase = if spool.spilled() {
                Phase::Sizing
            } else {
                Phase::Writing
            };
            self.update(phase, (batch.first + batch.count as u64) * cs, 0);
            Ok(())
        })?;
        self.cancelled()?;
        let layout = packer.finish(&mut spool)?;
        spool.flush()?;
        self.count_unread(&mut counts);
        let header = layout.header();

        let mut out = Emitter::new(Dest::Sink(&mut *sink), Some(Digester::new()?));
        out.emit(&header)?;
        let (layout, passes) = if let Dest::Spool { chunks, .. } =
            std::mem::replace(&mut spool.dest, Dest::Count)
        {
            tracing::debug!(
                bytes = spool.written - cs,
                "Data fit the memory limit: one pass"
            );
            drop(crcs);
            let image_size = layout.image_size();
            for chunk in chunks {
                self.cancelled()?;
                out.emit_chunk(chunk)?;
                self.update_image(Phase::Sending, out.written, image_size, out.written);
            }
            (layout, 1)
        } else {
            tracing::info!(
                data_bytes = layout.cursor() - cs,
                spool = budget,
                "Compressed data exceeds the memory left for it: reading the source a second time"
            );
            // Pass 2 places the clusters again over the first layout,
            // which checks each placement instead of recording it: the
            // metadata is held once. The same clusters must come out
            // with the same sizes and CRCs; the layout, hence the header
            // already sent, then holds.
            let mut packer = Packer::new(layout.replay());
            let mut again = ClusterCounts::default();
            let mut next = 0usize;
            self.pipeline(scan, &settings, &mut |batch| {
                for crc in &batch.crcs {
                    if crcs.get(next) != Some(crc) {
                        return Err(Error::SourceChanged {
                            path: self.disk.path().to_owned(),
                        });
                    }
                    next += 1;
                }
                self.write_batch(batch, &mut packer, &mut out, &mut again)
            })?;
            self.cancelled()?;
            let changed = || Error::SourceChanged {
                path: self.disk.path().to_owned(),
            };
            // Every cluster's CRC matched and went where it went the first time.
            let layout = packer.finish(&mut out)?.end_replay().ok_or_else(changed)?;
            if next != crcs.len() {
                return Err(changed());
            }
            (layout, 2)
        };
        layout.emit_metadata(&mut out)?;
        out.flush()?;
        let image_size = out.written;
        self.update(Phase::Writing, self.disk.size(), image_size);
        debug_assert_eq!(image_size, layout.image_size());
        let digests = out.finish_digests()?;
        Ok(Outcome {
            virtual_size: layout.virtual_size(),
            image_size,
            digests,
            passes,
            clusters: counts,
            partitions: Vec::new(),
        })
    }

    fn raw(&self, scan: &Scan, sink: &mut dyn Sink, seekable: bool) -> Result<Outcome> {
        let cs = u64::from(self.settings.cluster_size);
        let size = self.disk.size();
        let dest = if seekable {
            Dest::Sparse(&mut *sink)
        } else {
            Dest::Sink(&mut *sink)
        };
        let mut out = Emitter::new(dest, Some(Digester::new()?));
        let mut counts = ClusterCounts::default();
        self.pipeline(scan, &self.settings, &mut |batch| {
            let start = batch.first * cs;
            out.emit_zeros(start - out.written)?;
            for (n, stored) in batch.stored.iter().enumerate() {
                let offset = start + n as u64 * cs;
                let len = cs.min(size - offset);
                match stored {
                    Stored::Zero => {
                        counts.zero += 1;
                        out.emit_zeros(len)?;
                    }
                    _ => {
                        counts.plain += 1;
                        out.emit(&batch.data[n * cs as usize..n * cs as usize + len as usize])?;
                    }
                }
            }
            self.update(Phase::Writing, start + batch.count as u64 * cs, out.written);
            Ok(())
        })?;
        self.cancelled()?;
        out.emit_zeros(size - out.written)?;
        out.flush()?;
        let digester = out.digester.take();
        drop(out);
        if seekable {
            // Trailing zeros were skipped: give the file its full length.
            sink.set_len(size)?;
        }
        let digests = digester
            .map(Digester::finish)
            .transpose()?
            .unwrap_or_default();
        self.count_unread(&mut counts);
        Ok(Outcome {
            virtual_size: size,
            image_size: size,
            digests,
            passes: 1,
            clusters: counts,
            partitions: Vec::new(),
        })
    }
}

/// Where emitted bytes go.
enum Dest<'a> {
    /// Appended to a sink.
    Sink(&'a mut dyn Sink),
    /// Written at their offset; zeros are skipped, leaving holes.
    Sparse(&'a mut dyn Sink),
    /// Kept in memory until `limit` bytes, then dropped ([`Dest::Count`]).
    Spool { chunks: Vec<Vec<u8>>, limit: u64 },
    /// Only counted.
    Count,
}

/// Collects emitted bytes into large pieces for the sink and the digests.
struct Emitter<'a> {
    chunk: Vec<u8>,
    dest: Dest<'a>,
    digester: Option<Digester>,
    /// Bytes emitted so far (flushed or not): the offset of the next byte.
    written: u64,
    /// Bytes held by the spool.
    spooled: u64,
    zeros: Option<Arc<Vec<u8>>>,
    recycler: Recycler,
}

impl<'a> Emitter<'a> {
    fn new(dest: Dest<'a>, digester: Option<Digester>) -> Emitter<'a> {
        Emitter {
            chunk: Vec::with_capacity(CHUNK),
            dest,
            digester,
            written: 0,
            spooled: 0,
            zeros: None,
            recycler: Recycler::default(),
        }
    }

    /// Whether the spool overflowed (or there never was one).
    fn spilled(&self) -> bool {
        !matches!(self.dest, Dest::Spool { .. })
    }

    /// Offset of the first byte of the pending chunk.
    fn chunk_offset(&self) -> u64 {
        self.written - self.chunk.len() as u64
    }

    fn flush(&mut self) -> Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::take(&mut self.chunk);
        self.put(chunk)?;
        if self.chunk.capacity() == 0 {
            self.chunk = self.recycler.take(CHUNK);
            self.chunk.clear();
        }
        Ok(())
    }

    /// Sends a full piece to the digests and the destination.
    fn put(&mut self, mut chunk: Vec<u8>) -> Result<()> {
        let offset = self.written - chunk.len() as u64;
        match &mut self.dest {
            Dest::Spool { chunks, limit } => {
                self.spooled += chunk.len() as u64;
                if self.spooled > *limit {
                    tracing::debug!(
                        limit = *limit,
                        "Spool full: the image will be emitted in a second pass"
                    );
                    self.dest = Dest::Count;
                } else {
                    chunks.push(chunk);
                }
                return Ok(());
            }
            Dest::Count => {
                chunk.clear();
                self.chunk = chunk;
                return Ok(());
            }
            Dest::Sink(sink) => sink.write(&chunk)?,
            Dest::Sparse(sink) => sink.write_at(offset, &chunk)?,
        }
        if let Some(digester) = &mut self.digester {
            let len = chunk.len();
            let chunk = Arc::new(chunk);
            digester.update(Piece::new(chunk.clone(), len))?;
            self.recycler.keep(chunk);
        } else {
            // Nobody else holds it: reuse the allocation.
            chunk.clear();
            self.chunk = chunk;
        }
        Ok(())
    }

    /// Emits a whole spooled piece without copying it.
    fn emit_chunk(&mut self, chunk: Vec<u8>) -> Result<()> {
        self.flush()?;
        self.written += chunk.len() as u64;
        self.put(chunk)
    }

    fn finish_digests(mut self) -> Result<Digests> {
        self.flush()?;
        match self.digester.take() {
            Some(digester) => digester.finish(),
            None => Err(Error::Internal("No digests were computed".into())),
        }
    }

    /// Gives up spooling as soon as the spool would exceed its limit, so
    /// that memory never holds more than the limit plus one chunk.
    fn check_spool(&mut self) {
        if let Dest::Spool { limit, .. } = self.dest {
            if self.spooled + self.chunk.len() as u64 > limit {
                tracing::debug!(
                    limit,
                    "Spool full: the image will be emitted in a second pass"
                );
                self.dest = Dest::Count;
                self.chunk.clear();
            }
        }
    }

    fn zero_piece(&mut self) -> Arc<Vec<u8>> {
        self.zeros
            .get_or_insert_with(|| Arc::new(vec![0u8; CHUNK]))
            .clone()
    }
}

impl Emit for Emitter<'_> {
    fn emit(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let take = (CHUNK - self.chunk.len()).min(bytes.len());
            self.chunk.extend_from_slice(&bytes[..take]);
            self.written += take as u64;
            bytes = &bytes[take..];
            if self.chunk.len() == CHUNK {
                self.flush()?;
            }
        }
        self.check_spool();
        Ok(())
    }

    fn emit_zeros(&mut self, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let big = len >= CHUNK as u64;
        match self.dest {
            Dest::Sparse(_) => {
                // Leave a hole: flush what precedes, digest the zeros only.
                self.flush()?;
                let zeros = self.zero_piece();
                let mut left = len;
                while left > 0 {
                    let n = left.min(CHUNK as u64) as usize;
                    if let Some(digester) = &mut self.digester {
                        digester.update(Piece::new(zeros.clone(), n))?;
                    }
                    left -= n as u64;
                }
                self.written += len;
                debug_assert_eq!(self.chunk_offset(), self.written);
                Ok(())
            }
            Dest::Sink(_) if big => {
                self.flush()?;
                let zeros = self.zero_piece();
                let mut left = len;
                while left > 0 {
                    let n = left.min(CHUNK as u64) as usize;
                    if let Dest::Sink(sink) = &mut self.dest {
                        sink.write(&zeros[..n])?;
                    }
                    if let Some(digester) = &mut self.digester {
                        digester.update(Piece::new(zeros.clone(), n))?;
                    }
                    self.written += n as u64;
                    left -= n as u64;
                }
                Ok(())
            }
            _ => {
                // Padding, small: part of the byte stream.
                let mut left = len;
                while left > 0 {
                    let take = (CHUNK - self.chunk.len()).min(left as usize);
                    self.chunk.resize(self.chunk.len() + take, 0);
                    self.written += take as u64;
                    left -= take as u64;
                    if self.chunk.len() == CHUNK {
                        self.flush()?;
                    }
                }
                self.check_spool();
                Ok(())
            }
        }
    }
}
