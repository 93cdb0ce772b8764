//! The emitter: carries the bytes of the image to a sink and to the digests.
//!
//! Layout code emits many small pieces (a compressed cluster, padding, a
//! table); the sink and the hash threads want few large ones. The emitter
//! collects pieces into [`CHUNK`]-sized buffers, hands each to the sink and
//! then, shared without a copy, to the digests, and takes the buffers back
//! once the hash threads are done with them.

use std::sync::Arc;

use super::CHUNK;
use crate::digest::{Digester, Digests, Piece, Recycler};
use crate::error::{Error, Result};
use crate::qcow2::Emit;
use crate::sink::Sink;

/// Collects emitted bytes into large pieces for a sink and the digests.
pub(super) struct Emitter<'a> {
    sink: &'a mut dyn Sink,
    /// Whether bytes go to their offset, zeros left as holes (a seekable
    /// sink taking a raw image), rather than appended.
    sparse: bool,
    chunk: Vec<u8>,
    digester: Option<Digester>,
    /// Bytes emitted so far (flushed or not): the offset of the next byte.
    written: u64,
    /// A chunk of zeros, shared with the digests, for runs of zeros that
    /// are not copied into the chunk.
    zeros: Option<Arc<Vec<u8>>>,
    recycler: Recycler,
}

impl<'a> Emitter<'a> {
    /// Appends to `sink`, computing no digests (a seekable qcow2 is
    /// digested by reading it back, once its header is in place).
    pub(super) fn new(sink: &'a mut dyn Sink) -> Emitter<'a> {
        Emitter {
            sink,
            sparse: false,
            chunk: Vec::with_capacity(CHUNK),
            digester: None,
            written: 0,
            zeros: None,
            recycler: Recycler::default(),
        }
    }

    /// Writes to `sink` and digests every byte; with `sparse`, writes
    /// each piece at its offset and leaves runs of zeros as holes.
    pub(super) fn digesting(sink: &'a mut dyn Sink, sparse: bool) -> Result<Emitter<'a>> {
        Ok(Emitter {
            sparse,
            digester: Some(Digester::new()?),
            ..Emitter::new(sink)
        })
    }

    /// Bytes emitted so far, flushed or not: the offset of the next byte.
    pub(super) fn written(&self) -> u64 {
        self.written
    }

    /// Offset of the first byte of the pending chunk.
    fn chunk_offset(&self) -> u64 {
        self.written - self.chunk.len() as u64
    }

    /// Hands the pending chunk to the sink and the digests.
    pub(super) fn flush(&mut self) -> Result<()> {
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

    /// Sends a full piece, the last `chunk.len()` bytes emitted, to the
    /// sink and the digests.
    fn put(&mut self, mut chunk: Vec<u8>) -> Result<()> {
        let offset = self.written - chunk.len() as u64;
        if self.sparse {
            self.sink.write_at(offset, &chunk)?;
        } else {
            self.sink.write(&chunk)?;
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
    pub(super) fn emit_chunk(&mut self, chunk: Vec<u8>) -> Result<()> {
        self.flush()?;
        self.written += chunk.len() as u64;
        self.put(chunk)
    }

    /// Flushes what is pending and returns the digests of every byte
    /// emitted.
    ///
    /// Errors: [`Error::Internal`] for an emitter made without digests.
    pub(super) fn finish_digests(mut self) -> Result<Digests> {
        self.flush()?;
        match self.digester.take() {
            Some(digester) => digester.finish(),
            None => Err(Error::Internal("No digests were computed".into())),
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
        Ok(())
    }

    fn emit_zeros(&mut self, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        if self.sparse {
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
        } else if len >= CHUNK as u64 {
            // A long run (a raw disk's hole sent to a stream): write it from
            // the shared piece of zeros rather than copying it chunk by chunk.
            self.flush()?;
            let zeros = self.zero_piece();
            let mut left = len;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                self.sink.write(&zeros[..n])?;
                if let Some(digester) = &mut self.digester {
                    digester.update(Piece::new(zeros.clone(), n))?;
                }
                self.written += n as u64;
                left -= n as u64;
            }
        } else {
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
        }
        Ok(())
    }
}
