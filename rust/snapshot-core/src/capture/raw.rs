//! Raw images: the disk byte for byte.
//!
//! Clusters the pipeline found all zero, and those never read (holes, free
//! space), are zeros in the image: a seekable sink gets holes there (the
//! file stays sparse), a forward-only one gets the zeros themselves.

use super::{Emitter, Job, Outcome, Scan, Strategy};
use crate::error::Result;
use crate::pipeline::Stored;
use crate::progress::Phase;
use crate::qcow2::Emit;
use crate::report::ClusterCounts;
use crate::sink::Sink;

/// A raw image, written in one pass.
pub(super) struct Raw {
    /// Whether the sink is seekable: zeros are then left as holes.
    pub(super) sparse: bool,
}

impl Strategy for Raw {
    fn write(&self, job: &Job<'_>, scan: &Scan, sink: &mut dyn Sink) -> Result<Outcome> {
        let cs = u64::from(job.settings.cluster_size);
        let size = job.disk.size();
        let mut out = Emitter::digesting(&mut *sink, self.sparse)?;
        let mut counts = ClusterCounts::default();
        job.pipeline(scan, &job.settings, &mut |batch| {
            let start = batch.first * cs;
            out.emit_zeros(start - out.written())?;
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
            job.update(
                Phase::Writing,
                start + batch.count as u64 * cs,
                out.written(),
            );
            Ok(())
        })?;
        job.cancelled()?;
        out.emit_zeros(size - out.written())?;
        let digests = out.finish_digests()?;
        if self.sparse {
            // Trailing zeros were skipped: give the file its full length.
            sink.set_len(size)?;
        }
        job.count_unread(&mut counts);
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
