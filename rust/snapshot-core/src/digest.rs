//! Digests of the emitted image bytes.

/// Digests of an image's bytes as lowercase hex strings: SHA-256 for the
/// report, MD5 and SHA-512 because Glance reports them (`checksum`,
/// `os_hash_value`) and the upload is verified against them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Digests {
    /// MD5, lowercase hex (Glance `checksum`).
    pub md5: String,
    /// SHA-256, lowercase hex.
    pub sha256: String,
    /// SHA-512, lowercase hex (Glance `os_hash_value` with `os_hash_algo` sha512).
    pub sha512: String,
}

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, bounded};
use md5::Md5;
use sha2::{Digest, Sha256, Sha512};

use crate::error::{Error, Result};

/// A piece of the emitted image: the first `len` bytes of a shared buffer.
/// Shared so that each hash thread reads the same bytes without a copy.
#[derive(Debug, Clone)]
pub(crate) struct Piece {
    buf: Arc<Vec<u8>>,
    len: usize,
}

impl Piece {
    /// The first `len` bytes of `buf`.
    pub(crate) fn new(buf: Arc<Vec<u8>>, len: usize) -> Piece {
        debug_assert!(len <= buf.len());
        Piece { buf, len }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Gives buffers handed to the hash threads back for reuse once every
/// thread is done with them, sparing a fresh multi-MiB allocation (and its
/// page faults) per piece.
#[derive(Default)]
pub(crate) struct Recycler {
    sent: std::collections::VecDeque<Arc<Vec<u8>>>,
}

/// Buffers remembered for reuse: a few more than the hash queues hold.
pub(crate) const RECYCLE: usize = QUEUE + 4;

impl Recycler {
    /// A buffer with room for `capacity` bytes: the oldest one sent, if the
    /// hash threads have all let go of it, else a new one. Its contents are
    /// whatever it held.
    pub(crate) fn take(&mut self, capacity: usize) -> Vec<u8> {
        if self
            .sent
            .front()
            .is_some_and(|buf| Arc::strong_count(buf) == 1)
        {
            if let Some(Ok(buf)) = self.sent.pop_front().map(Arc::try_unwrap) {
                if buf.capacity() >= capacity {
                    return buf;
                }
            }
        }
        Vec::with_capacity(capacity)
    }

    /// Remembers a buffer that was sent, to take it back later.
    pub(crate) fn keep(&mut self, buf: Arc<Vec<u8>>) {
        self.sent.push_back(buf);
        if self.sent.len() > RECYCLE {
            self.sent.pop_front();
        }
    }
}

/// Computes MD5, SHA-256 and SHA-512 of a byte stream, each on its own
/// thread: together they cost more than zstd at low levels, and on a
/// single thread they would make the writer the bottleneck.
pub(crate) struct Digester {
    senders: Vec<Sender<Piece>>,
    threads: Vec<JoinHandle<String>>,
}

/// Pieces queued per hash thread: bounds the memory a slow hash can hold.
const QUEUE: usize = 4;

fn hash_thread<D: Digest + Send + 'static>(
    name: &str,
) -> Result<(Sender<Piece>, JoinHandle<String>)> {
    let (tx, rx) = bounded::<Piece>(QUEUE);
    let handle = std::thread::Builder::new()
        .name(format!("digest-{name}"))
        .spawn(move || {
            let mut hasher = D::new();
            for piece in rx {
                hasher.update(piece.bytes());
            }
            hex::encode(hasher.finalize())
        })
        .map_err(|err| Error::Internal(format!("Cannot start a digest thread: {err}")))?;
    Ok((tx, handle))
}

impl Digester {
    /// Starts the three hash threads.
    pub(crate) fn new() -> Result<Digester> {
        let (md5_tx, md5) = hash_thread::<Md5>("md5")?;
        let (sha256_tx, sha256) = hash_thread::<Sha256>("sha256")?;
        let (sha512_tx, sha512) = hash_thread::<Sha512>("sha512")?;
        Ok(Digester {
            senders: vec![md5_tx, sha256_tx, sha512_tx],
            threads: vec![md5, sha256, sha512],
        })
    }

    /// Feeds the next piece of the stream.
    pub(crate) fn update(&mut self, piece: Piece) -> Result<()> {
        for tx in &self.senders {
            tx.send(piece.clone())
                .map_err(|_| Error::Internal("A digest thread stopped".into()))?;
        }
        Ok(())
    }

    /// Ends the stream and returns its digests.
    pub(crate) fn finish(mut self) -> Result<Digests> {
        self.senders.clear();
        let mut hex = Vec::with_capacity(3);
        for thread in self.threads.drain(..) {
            hex.push(
                thread
                    .join()
                    .map_err(|_| Error::Internal("A digest thread panicked".into()))?,
            );
        }
        let sha512 = hex.pop().unwrap_or_default();
        let sha256 = hex.pop().unwrap_or_default();
        let md5 = hex.pop().unwrap_or_default();
        Ok(Digests {
            md5,
            sha256,
            sha512,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_of_known_input() {
        let mut digester = Digester::new().unwrap();
        let buf = Arc::new(b"abcXYZ".to_vec());
        digester.update(Piece::new(buf, 3)).unwrap();
        let digests = digester.finish().unwrap();
        assert_eq!(digests.md5, "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            digests.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(digests.sha512.starts_with("ddaf35a193617aba"));
    }

    #[test]
    fn digests_of_nothing() {
        let digests = Digester::new().unwrap().finish().unwrap();
        assert_eq!(digests.md5, "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(
            digests.sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
