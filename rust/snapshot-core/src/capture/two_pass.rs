//! The second pass of a stream whose compressed data outgrew its spool.
//!
//! The header, already sent, holds the first pass's layout. This pass reads
//! and compresses the disk again (compression is deterministic) while
//! emitting, and places every cluster again over that layout: the same
//! clusters must come out with the same CRC-32 and go to the same place. A
//! difference means the source changed under the capture, and the image
//! would not match its header.

use super::{Emitter, Job, Scan};
use crate::error::{Error, Result};
use crate::pipeline::Settings;
use crate::qcow2::{Layout, Packer};
use crate::report::ClusterCounts;

/// What the first pass leaves for the second: a CRC-32 of every cluster it
/// stored, in order.
pub(super) struct TwoPass {
    pub(super) crcs: Vec<u32>,
}

impl TwoPass {
    /// Emits the data area into `out` (the header already there) by reading
    /// the disk again, checking each cluster against the first pass; returns
    /// the layout, whose metadata is still to be emitted.
    ///
    /// Errors: [`Error::SourceChanged`] when a cluster's CRC, place or the
    /// number of clusters differs from the first pass.
    pub(super) fn replay(
        self,
        job: &Job<'_>,
        scan: &Scan,
        settings: &Settings,
        layout: Layout,
        out: &mut Emitter<'_>,
    ) -> Result<Layout> {
        let changed = || Error::SourceChanged {
            path: job.disk.path().to_owned(),
        };
        // Placing the clusters again over the first layout checks each
        // placement instead of recording it: the metadata is held once.
        let mut packer = Packer::new(layout.replay());
        // Counted in the first pass already; this pass's count is dropped.
        let mut again = ClusterCounts::default();
        let mut next = 0usize;
        job.pipeline(scan, settings, &mut |batch| {
            for crc in &batch.crcs {
                if self.crcs.get(next) != Some(crc) {
                    return Err(changed());
                }
                next += 1;
            }
            job.write_batch(batch, &mut packer, out, &mut again)
        })?;
        job.cancelled()?;
        // Every cluster's CRC matched and went where it went the first time.
        let layout = packer.finish(out)?.end_replay().ok_or_else(changed)?;
        if next != self.crcs.len() {
            return Err(changed());
        }
        Ok(layout)
    }
}
