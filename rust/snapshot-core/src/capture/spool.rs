//! The spool: the data area of a streamed qcow2, held in memory until the
//! header (which comes first and depends on everything) is known.

use super::CHUNK;
use crate::error::Result;
use crate::qcow2::Emit;

/// Holds emitted bytes in memory, in [`CHUNK`]-sized pieces, up to a limit.
///
/// Past the limit it overflows: it lets go of everything it held and from
/// then on only counts, so that the first pass of a stream can go on sizing
/// the image for a second pass ([`super::two_pass`]) without holding more
/// than the limit plus the piece being filled.
pub(super) struct Spool {
    /// Full pieces, in order; `None` once the spool overflowed.
    chunks: Option<Vec<Vec<u8>>>,
    /// The piece being filled.
    chunk: Vec<u8>,
    /// Bytes in `chunks`.
    full: u64,
    limit: u64,
    /// Offset of the next byte in the image (what was emitted before the
    /// spool, such as the header's cluster, included).
    written: u64,
}

impl Spool {
    /// An empty spool for the image bytes from offset `start` on, that
    /// holds at most `limit` of them.
    pub(super) fn new(start: u64, limit: u64) -> Spool {
        Spool {
            chunks: Some(Vec::new()),
            chunk: Vec::new(),
            full: 0,
            limit,
            written: start,
        }
    }

    /// Whether the data outgrew the limit (and is no longer held).
    pub(super) fn overflowed(&self) -> bool {
        self.chunks.is_none()
    }

    /// Offset of the next byte in the image.
    pub(super) fn written(&self) -> u64 {
        self.written
    }

    /// The pieces held, in order, or `None` if the spool overflowed.
    pub(super) fn into_chunks(mut self) -> Option<Vec<Vec<u8>>> {
        let mut chunks = self.chunks.take()?;
        if !self.chunk.is_empty() {
            chunks.push(std::mem::take(&mut self.chunk));
        }
        Some(chunks)
    }

    /// Appends `len` bytes that `fill` writes into the pending piece,
    /// a piece at a time.
    fn append(&mut self, mut len: usize, mut fill: impl FnMut(&mut Vec<u8>, usize)) {
        self.written += len as u64;
        while len > 0 {
            let Some(chunks) = &mut self.chunks else {
                // Overflowed: only the count matters now.
                return;
            };
            if self.chunk.capacity() == 0 {
                self.chunk.reserve_exact(CHUNK);
            }
            let take = (CHUNK - self.chunk.len()).min(len);
            fill(&mut self.chunk, take);
            len -= take;
            if self.chunk.len() == CHUNK {
                self.full += CHUNK as u64;
                chunks.push(std::mem::take(&mut self.chunk));
            }
            self.check();
        }
    }

    /// The one overflow rule: the spool gives up as soon as what it holds,
    /// full pieces and the pending one, exceeds the limit. Checked after
    /// every piece of every emit, so memory never holds more than the limit
    /// plus one piece.
    fn check(&mut self) {
        if self.chunks.is_some() && self.full + self.chunk.len() as u64 > self.limit {
            tracing::debug!(
                limit = self.limit,
                "Spool full: the image will be emitted in a second pass"
            );
            self.chunks = None;
            self.chunk = Vec::new();
            self.full = 0;
        }
    }
}

impl Emit for Spool {
    fn emit(&mut self, mut bytes: &[u8]) -> Result<()> {
        self.append(bytes.len(), |chunk, take| {
            chunk.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        });
        Ok(())
    }

    fn emit_zeros(&mut self, len: u64) -> Result<()> {
        // Zeros here are padding before a cluster: less than a cluster.
        self.append(len as usize, |chunk, take| {
            chunk.resize(chunk.len() + take, 0);
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_what_fits_the_limit_in_order() {
        let mut spool = Spool::new(10, CHUNK as u64 + 3);
        spool.emit(&vec![1u8; CHUNK - 1]).unwrap();
        spool.emit_zeros(2).unwrap();
        spool.emit(&[7, 8]).unwrap();
        assert!(!spool.overflowed());
        assert_eq!(spool.written(), 10 + CHUNK as u64 + 3);
        let chunks = spool.into_chunks().unwrap();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].len(), CHUNK);
        assert_eq!(&chunks[0][CHUNK - 2..], &[1, 0]);
        assert_eq!(chunks[1], vec![0, 7, 8]);
    }

    #[test]
    fn overflows_on_the_byte_past_the_limit_and_keeps_counting() {
        let mut spool = Spool::new(0, 100);
        spool.emit(&[5u8; 100]).unwrap();
        assert!(!spool.overflowed(), "exactly the limit still fits");
        spool.emit_zeros(1).unwrap();
        assert!(spool.overflowed());
        spool.emit(&vec![1u8; 2 * CHUNK]).unwrap();
        assert_eq!(spool.written(), 101 + 2 * CHUNK as u64);
        assert_eq!(
            spool.chunk.capacity(),
            0,
            "an overflowed spool holds nothing"
        );
        assert!(spool.into_chunks().is_none());
    }

    #[test]
    fn one_emit_larger_than_the_limit_overflows() {
        let mut spool = Spool::new(0, 10);
        spool.emit(&vec![1u8; 3 * CHUNK]).unwrap();
        assert!(spool.overflowed());
        assert_eq!(spool.written(), 3 * CHUNK as u64);
    }
}
