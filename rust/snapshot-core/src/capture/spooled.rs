//! qcow2 to a forward-only sink (standard output, Glance), spooled.
//!
//! The header must come first and depends on the size of everything, so the
//! compressed data area is held in a [`Spool`] and emitted once the layout
//! is known: in what `memory_limit` leaves once the metadata (bounded before
//! the disk is read) and the buffers are counted. When the data outgrows the
//! spool, this first pass only sizes the image, keeping a CRC-32 per stored
//! cluster, and [`TwoPass`] reads the disk again.

use super::two_pass::TwoPass;
use super::{CHUNK, Emitter, Job, Outcome, Scan, Spool, Strategy};
use crate::error::{Error, Result};
use crate::pipeline::{self, Settings};
use crate::progress::Phase;
use crate::qcow2::{self, Emit, Packer};
use crate::report::ClusterCounts;
use crate::sink::Sink;
use crate::size::format_size;

/// Most bytes the emitter of a stream holds besides the spool: the pieces
/// the hash threads may still read (kept for reuse), the piece being
/// filled, the piece of zeros, the plain clusters the packer lets wait for
/// a cluster boundary, and the header (at most one 2 MiB cluster).
const EMIT_BUFFERS: u64 = (crate::digest::RECYCLE as u64 + 2) * CHUNK as u64
    + qcow2::PENDING_BYTES
    + qcow2::MAX_CLUSTER_SIZE as u64;

/// qcow2 streamed to a forward-only sink: one pass while the compressed
/// data fits the spool, two when it does not.
pub(super) struct Spooled;

impl Strategy for Spooled {
    fn write(&self, job: &Job<'_>, scan: &Scan, sink: &mut dyn Sink) -> Result<Outcome> {
        let cs = u64::from(job.settings.cluster_size);
        // CRCs of the clusters, in case a second pass must check them.
        let settings = Settings {
            checksums: true,
            ..job.settings.clone()
        };
        let budget = spool_budget(job, scan, &settings, &*sink)?;
        // Pass 1: compress, spooling the data area while it fits the memory
        // limit, and keep a CRC-32 of every stored cluster in case it does not.
        // The data area starts after the header's cluster.
        let mut spool = Spool::new(cs, budget);
        let mut packer = Packer::new(job.layout(scan));
        let mut counts = ClusterCounts::default();
        // At most one per cluster read: reserved at once, as counted.
        let mut crcs: Vec<u32> = Vec::with_capacity(scan.clusters() as usize);
        job.pipeline(scan, &settings, &mut |batch| {
            crcs.extend_from_slice(&batch.crcs);
            job.pack(batch, &mut packer, &mut spool, &mut counts)?;
            let phase = if spool.overflowed() {
                Phase::Sizing
            } else {
                Phase::Writing
            };
            job.update(phase, (batch.first + batch.count as u64) * cs, 0);
            Ok(())
        })?;
        job.cancelled()?;
        let layout = packer.finish(&mut spool)?;
        job.count_unread(&mut counts);
        let spooled = spool.written() - cs;

        let mut out = Emitter::digesting(&mut *sink, false)?;
        out.emit(&layout.header())?;
        let (layout, passes) = match spool.into_chunks() {
            Some(chunks) => {
                tracing::debug!(bytes = spooled, "Data fit the memory limit: one pass");
                drop(crcs);
                let image_size = layout.image_size();
                for chunk in chunks {
                    job.cancelled()?;
                    out.emit_chunk(chunk)?;
                    job.update_image(Phase::Sending, out.written(), image_size, out.written());
                }
                (layout, 1)
            }
            None => {
                tracing::info!(
                    data_bytes = layout.cursor() - cs,
                    spool = budget,
                    "Compressed data exceeds the memory left for it: reading the source a second time"
                );
                let layout = TwoPass { crcs }.replay(job, scan, &settings, layout, &mut out)?;
                (layout, 2)
            }
        };
        layout.emit_metadata(&mut out)?;
        out.flush()?;
        let image_size = out.written();
        job.update(Phase::Writing, job.disk.size(), image_size);
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
}

/// The bytes of compressed data a stream may spool: what the memory
/// limit leaves once everything else the capture holds is counted. That
/// is the layout's metadata and a CRC-32 per cluster (both grow with the
/// data, bounded from the scan before the disk is read), and the
/// buffers of the workers, the emitter and the sink (fixed by the
/// settings). A limit below the metadata is refused: it can only grow.
/// Between the metadata and the metadata plus the buffers, nothing is
/// spooled (the disk is read twice) and the buffers are the excess.
fn spool_budget(job: &Job<'_>, scan: &Scan, settings: &Settings, sink: &dyn Sink) -> Result<u64> {
    let cs = job.settings.cluster_size;
    let clusters = scan.clusters();
    let bound = qcow2::memory_bound(cs, job.disk.size(), &scan.runs);
    let metadata = bound.layout + clusters * 4;
    let buffers =
        pipeline::memory_bound(settings)? + EMIT_BUFFERS + sink.buffer_bytes() + bound.emit;
    let limit = job.options.memory_limit;
    if limit < metadata {
        return Err(Error::InvalidOption {
            option: "--memory-limit",
            reason: format!(
                "{} cannot hold the metadata of this image: the L2 tables, reference counts and checksums of up to {clusters} clusters of {} of this {} disk take {}; give at least {}M, or a bigger --cluster-size (less metadata)",
                format_size(limit),
                format_size(u64::from(cs)),
                format_size(job.disk.size()),
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
