//! qcow2 to a seekable sink (a file), in one pass.
//!
//! The header depends on the size of everything, but a seekable sink can
//! take it last: the data area is written after a placeholder cluster 0,
//! then the metadata, then the header over the placeholder. Nothing is held
//! in memory beyond the layout. The digests come from reading the image
//! back, since the bytes of cluster 0 are only known at the end.

use std::sync::Arc;

use super::{CHUNK, Emitter, Job, Outcome, Scan, Strategy};
use crate::digest::{Digester, Digests, Piece, Recycler};
use crate::error::Result;
use crate::progress::Phase;
use crate::qcow2::{Emit, Packer};
use crate::report::ClusterCounts;
use crate::sink::Sink;

/// qcow2 written in one pass to a sink that can seek and read back.
pub(super) struct Seekable;

impl Strategy for Seekable {
    fn write(&self, job: &Job<'_>, scan: &Scan, sink: &mut dyn Sink) -> Result<Outcome> {
        let cs = u64::from(job.settings.cluster_size);
        let mut out = Emitter::new(&mut *sink);
        // Cluster 0 holds the header, written last.
        out.emit_zeros(cs)?;
        let mut packer = Packer::new(job.layout(scan));
        let mut counts = ClusterCounts::default();
        job.pipeline(scan, &job.settings, &mut |batch| {
            job.write_batch(batch, &mut packer, &mut out, &mut counts)
        })?;
        job.cancelled()?;
        let layout = packer.finish(&mut out)?;
        layout.emit_metadata(&mut out)?;
        out.flush()?;
        let image_size = out.written();
        job.update(Phase::Writing, job.disk.size(), image_size);
        drop(out);
        debug_assert_eq!(image_size, layout.image_size());
        sink.write_at(0, &layout.header())?;
        job.count_unread(&mut counts);
        tracing::debug!(image_size, "Image written; reading it back for its digests");
        let digests = digest_back(job, sink, image_size)?;
        Ok(Outcome {
            virtual_size: layout.virtual_size(),
            image_size,
            digests,
            passes: 1,
            clusters: counts,
            partitions: Vec::new(),
        })
    }
}

/// Digests what a seekable sink holds, by reading it back.
fn digest_back(job: &Job<'_>, sink: &mut dyn Sink, size: u64) -> Result<Digests> {
    let mut digester = Digester::new()?;
    let mut recycler = Recycler::default();
    let mut offset = 0u64;
    while offset < size {
        job.cancelled()?;
        let len = (size - offset).min(CHUNK as u64) as usize;
        let mut buf = recycler.take(CHUNK);
        buf.resize(len, 0);
        sink.read_at(offset, &mut buf)?;
        let buf = Arc::new(buf);
        digester.update(Piece::new(buf.clone(), len))?;
        recycler.keep(buf);
        offset += len as u64;
        job.update_image(Phase::Digesting, offset, size, size);
    }
    digester.finish()
}
