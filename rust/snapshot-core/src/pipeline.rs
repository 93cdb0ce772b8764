//! The read -> zero-check/compress -> ordered-consume pipeline.
//!
//! A pool of workers each take the next batch of consecutive clusters, read
//! it into a buffer from a fixed pool, zero-check and compress it, out of
//! order; the calling thread receives the batches back in order and hands
//! them to a consumer (the layout writer), then returns the buffers to the
//! pool. The pool's size bounds the memory in flight, whatever the disk size.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_channel::bounded;

use crate::error::{Error, Result};
use crate::fs::DiskPlan;
use crate::options::Compression;
use crate::source::Source;

/// Bytes of source read per batch: large reads, few channel messages.
const BATCH_BYTES: u64 = 1024 * 1024;

/// How one cluster of a batch is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    /// All zeros: not stored at all.
    Zero,
    /// Compressed: `len` bytes at `start` of the batch's output buffer.
    Compressed {
        /// Offset in [`Batch::out`].
        start: u32,
        /// Length in bytes.
        len: u32,
    },
    /// Stored as read (incompressible, no compression, or raw format).
    Plain,
}

/// Consecutive guest clusters, read and processed together.
#[derive(Debug)]
pub(crate) struct Batch {
    /// Index of the first cluster.
    pub first: u64,
    /// Number of clusters.
    pub count: usize,
    /// The clusters as read, zero-padded to whole clusters past the end of
    /// the disk; `count * cluster_size` bytes are valid.
    pub data: Vec<u8>,
    /// Compressed clusters, back to back.
    pub out: Vec<u8>,
    /// How each cluster is stored.
    pub stored: Vec<Stored>,
    /// CRC-32 of each stored (non-zero) cluster's bytes, when asked for.
    pub crcs: Vec<u32>,
}

/// What the workers do and how they cut the disk into batches.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Cluster size in bytes.
    pub cluster_size: u32,
    /// Compression of non-zero clusters; `None` only zero-checks.
    pub compression: Compression,
    /// Compression level.
    pub level: i32,
    /// Number of workers.
    pub threads: usize,
    /// Whether to compute a CRC-32 per stored cluster (forward-only sinks
    /// use them to check that a second pass reads the same data).
    pub checksums: bool,
}

/// Whether `buf` holds only zeros. Word-wise and branch-light so the
/// compiler vectorises it; stops at the first non-zero kilobyte, so data
/// clusters are rejected after reading a few bytes.
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    let mut blocks = buf.chunks_exact(1024);
    for block in &mut blocks {
        let mut acc = 0u64;
        for word in block.chunks_exact(8) {
            acc |= u64::from_ne_bytes(word.try_into().expect("8-byte chunk"));
        }
        if acc != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

/// Turns sorted, non-overlapping byte ranges into sorted, merged runs of the
/// clusters that overlap them.
pub(crate) fn cluster_runs(ranges: &[Range<u64>], cluster_size: u64) -> Vec<Range<u64>> {
    let mut runs: Vec<Range<u64>> = Vec::new();
    for r in ranges.iter().filter(|r| r.start < r.end) {
        let start = r.start / cluster_size;
        let end = r.end.div_ceil(cluster_size);
        match runs.last_mut() {
            Some(last) if start <= last.end => last.end = last.end.max(end),
            _ => runs.push(start..end),
        }
    }
    runs
}

/// A per-worker compressor, reused for every cluster.
enum Compressor {
    Zstd(zstd::bulk::Compressor<'static>),
    Zlib(flate2::Compress),
    None,
}

impl Compressor {
    fn new(compression: Compression, level: i32) -> Result<Compressor> {
        Ok(match compression {
            Compression::Zstd => {
                Compressor::Zstd(zstd::bulk::Compressor::new(level).map_err(|err| {
                    Error::Internal(format!("Cannot create a zstd compressor: {err}"))
                })?)
            }
            // Raw deflate (no zlib header) with a 4 KiB window: what qemu
            // writes and reads (window bits -12).
            Compression::Zlib => Compressor::Zlib(flate2::Compress::new_with_window_bits(
                flate2::Compression::new(level as u32),
                false,
                12,
            )),
            Compression::None => Compressor::None,
        })
    }

    /// Compresses `input` into `output`, returning the compressed length, or
    /// `None` when it does not fit `output` (the data is incompressible).
    fn compress(&mut self, input: &[u8], output: &mut [u8]) -> Result<Option<usize>> {
        match self {
            Compressor::Zstd(zstd) => match zstd.compress_to_buffer(input, output) {
                Ok(n) => Ok(Some(n)),
                // zstd reports "destination buffer too small" as an error.
                Err(_) => Ok(None),
            },
            Compressor::Zlib(deflate) => {
                deflate.reset();
                match deflate.compress(input, output, flate2::FlushCompress::Finish) {
                    Ok(flate2::Status::StreamEnd) => Ok(Some(deflate.total_out() as usize)),
                    Ok(_) => Ok(None),
                    Err(err) => Err(Error::Internal(format!("Deflate failed: {err}"))),
                }
            }
            Compressor::None => Ok(None),
        }
    }
}

fn process(
    batch: &mut Batch,
    compressor: &mut Compressor,
    scratch: &mut [u8],
    settings: &Settings,
) -> Result<()> {
    let cs = settings.cluster_size as usize;
    batch.out.clear();
    batch.stored.clear();
    batch.crcs.clear();
    for cluster in batch.data[..batch.count * cs].chunks_exact(cs) {
        if is_zero(cluster) {
            batch.stored.push(Stored::Zero);
            continue;
        }
        // qemu stores a cluster compressed only if that saves at least one
        // byte: compressed data must fit `cluster_size - 1` bytes.
        let stored = match compressor.compress(cluster, scratch)? {
            Some(len) => {
                let start = batch.out.len();
                batch.out.extend_from_slice(&scratch[..len]);
                if settings.checksums {
                    batch.crcs.push(crc32fast::hash(&scratch[..len]));
                }
                Stored::Compressed {
                    start: start as u32,
                    len: len as u32,
                }
            }
            None => {
                if settings.checksums {
                    batch.crcs.push(crc32fast::hash(cluster));
                }
                Stored::Plain
            }
        };
        batch.stored.push(stored);
    }
    Ok(())
}

/// Everything the workers need to read the disk.
pub(crate) struct Input<'a> {
    /// The disk.
    pub source: &'a Source,
    /// Runs of cluster indices to read; every other cluster is zero.
    pub runs: &'a [Range<u64>],
    /// A free-space plan whose unplanned bytes are zeroed after reading
    /// (clusters partly covered by planned ranges).
    pub mask: Option<&'a DiskPlan>,
    /// Set by the caller to stop.
    pub cancel: Option<&'a AtomicBool>,
    /// Bytes read from the source, added to as the workers read.
    pub bytes_read: &'a AtomicU64,
}

fn cancelled(cancel: Option<&AtomicBool>) -> bool {
    cancel.is_some_and(|c| c.load(Ordering::Relaxed))
}

fn read_batch(input: &Input<'_>, cs: u64, batch: &mut Batch) -> Result<()> {
    let size = input.source.size();
    let start = batch.first * cs;
    let len = batch.count as u64 * cs;
    let valid = len.min(size.saturating_sub(start));
    let buf = &mut batch.data[..len as usize];
    input
        .source
        .read_exact_at(start, &mut buf[..valid as usize])?;
    input.bytes_read.fetch_add(valid, Ordering::Relaxed);
    // The last cluster of a disk whose size is not a multiple of the cluster
    // size is zero-padded: qcow2 stores whole clusters.
    buf[valid as usize..].fill(0);
    if let Some(plan) = input.mask {
        plan.zero_unplanned(start, &mut buf[..valid as usize]);
    }
    Ok(())
}

/// Hands out the batches of the runs in disk order, each with its sequence
/// number, to whichever worker asks next.
struct Cursor<'a> {
    runs: std::slice::Iter<'a, Range<u64>>,
    /// Clusters of the current run still to hand out.
    current: Range<u64>,
    per_batch: u64,
    seq: u64,
}

impl Cursor<'_> {
    /// The next batch: `(sequence number, first cluster, cluster count)`.
    fn next(&mut self) -> Option<(u64, u64, usize)> {
        while self.current.is_empty() {
            self.current = self.runs.next()?.clone();
        }
        let first = self.current.start;
        let count = self.per_batch.min(self.current.end - first);
        self.current.start += count;
        let seq = self.seq;
        self.seq += 1;
        Some((seq, first, count as usize))
    }
}

/// Clusters per batch.
fn clusters_per_batch(settings: &Settings) -> usize {
    (BATCH_BYTES / u64::from(settings.cluster_size)).max(1) as usize
}

/// Batches in the pool: enough for every worker to hold one and the
/// consumer to drain a few out of order.
fn pool_size(settings: &Settings) -> usize {
    2 * settings.threads.max(1) + 2
}

/// Most bytes of memory [`run`] holds whatever the disk size: the pool of
/// batches (each with its data, its compressed output and per-cluster
/// bookkeeping) and every worker's scratch buffer and compressor. The
/// compressor's state is measured: zstd sizes it from the level and the
/// cluster size, so one is made and run on a zero cluster.
pub(crate) fn memory_bound(settings: &Settings) -> Result<u64> {
    let cs = u64::from(settings.cluster_size);
    let per_batch = clusters_per_batch(settings) as u64;
    let batch = 2 * per_batch * cs + per_batch * (std::mem::size_of::<Stored>() as u64 + 4);
    let compressor = compressor_memory(settings)?;
    let worker = cs + compressor;
    Ok(pool_size(settings) as u64 * batch + settings.threads.max(1) as u64 * worker)
}

/// Bytes one worker's compressor holds once it has compressed a cluster.
fn compressor_memory(settings: &Settings) -> Result<u64> {
    let cs = settings.cluster_size as usize;
    Ok(
        match Compressor::new(settings.compression, settings.level)? {
            Compressor::Zstd(mut zstd) => {
                let input = vec![0u8; cs];
                let mut output = vec![0u8; cs];
                // Only allocates the state; the bytes do not matter.
                let _ = zstd.compress_to_buffer(&input, &mut output);
                zstd.context_mut().sizeof() as u64
            }
            // zlib-rs: the deflate state, window and hash chains of a 4 KiB
            // window are a few hundred KiB at most.
            Compressor::Zlib(_) => 512 << 10,
            Compressor::None => 0,
        },
    )
}

/// Runs the pipeline over `input`, calling `consume` with each batch in
/// disk order. Stops at the first error of any stage, or when cancelled.
///
/// Every worker reads its own batches: reading copies from the page cache
/// (or waits for the disk), and one reader thread could not keep several
/// workers busy through long stretches of zeros, where checking is much
/// faster than reading. Several reads in flight also suit disks with deep
/// queues (NVMe). A worker claims a batch number only once it holds a
/// buffer, so the batch the consumer waits for is always being worked on
/// and the bounded pool cannot deadlock.
pub(crate) fn run(
    input: &Input<'_>,
    settings: &Settings,
    consume: &mut dyn FnMut(&Batch) -> Result<()>,
) -> Result<()> {
    let cs = u64::from(settings.cluster_size);
    let threads = settings.threads.max(1);
    let per_batch = clusters_per_batch(settings);
    let pool = pool_size(settings);
    // The scratch buffer holds one compressed cluster; output longer than
    // this is not worth storing compressed.
    let limit = settings.cluster_size as usize - 1;
    let cursor = std::sync::Mutex::new(Cursor {
        runs: input.runs.iter(),
        current: 0..0,
        per_batch: per_batch as u64,
        seq: 0,
    });

    std::thread::scope(|scope| {
        let (free_tx, free_rx) = bounded::<Batch>(pool);
        for _ in 0..pool {
            let batch = Batch {
                first: 0,
                count: 0,
                data: vec![0u8; per_batch * cs as usize],
                out: Vec::with_capacity(per_batch * cs as usize),
                stored: Vec::with_capacity(per_batch),
                crcs: Vec::with_capacity(per_batch),
            };
            free_tx
                .send(batch)
                .map_err(|_| Error::Internal("Batch pool closed".into()))?;
        }
        let (done_tx, done_rx) = bounded::<(u64, Result<Batch>)>(pool);

        for n in 0..threads {
            let free_rx = free_rx.clone();
            let done_tx = done_tx.clone();
            let cursor = &cursor;
            std::thread::Builder::new()
                .name(format!("capture-work-{n}"))
                .spawn_scoped(scope, move || {
                    let mut compressor = match Compressor::new(settings.compression, settings.level)
                    {
                        Ok(c) => c,
                        Err(err) => {
                            let _ = done_tx.send((u64::MAX, Err(err)));
                            return;
                        }
                    };
                    let mut scratch = vec![0u8; limit];
                    // The consumer dropped the pool: it stopped, and says why.
                    while let Ok(mut batch) = free_rx.recv() {
                        let claimed = cursor
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .next();
                        let Some((seq, first, count)) = claimed else {
                            return;
                        };
                        let result = if cancelled(input.cancel) {
                            Err(Error::Cancelled)
                        } else {
                            batch.first = first;
                            batch.count = count;
                            read_batch(input, cs, &mut batch)
                                .and_then(|()| {
                                    process(&mut batch, &mut compressor, &mut scratch, settings)
                                })
                                .map(|()| batch)
                        };
                        let failed = result.is_err();
                        if done_tx.send((seq, result)).is_err() || failed {
                            return;
                        }
                    }
                })
                .map_err(|err| Error::Internal(format!("Cannot start a worker thread: {err}")))?;
        }
        drop(free_rx);
        drop(done_tx);

        // Consume in order; the channel ends when all workers are done (or
        // gave up). The first error in disk order wins: a short read explains
        // everything after it.
        let free_tx = free_tx;
        let mut waiting: BTreeMap<u64, Result<Batch>> = BTreeMap::new();
        let mut next = 0u64;
        for (seq, result) in done_rx {
            if seq == u64::MAX {
                // A worker could not start.
                return Err(result
                    .err()
                    .unwrap_or_else(|| Error::Internal("A worker could not start".into())));
            }
            waiting.insert(seq, result);
            while let Some(result) = waiting.remove(&next) {
                let batch = result?;
                if cancelled(input.cancel) {
                    return Err(Error::Cancelled);
                }
                consume(&batch)?;
                next += 1;
                // Workers may have stopped already; the batch is then
                // simply dropped.
                let _ = free_tx.send(batch);
            }
        }
        if let Some((_, Err(err))) = waiting.pop_first() {
            return Err(err);
        }
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(Error::Internal(
                "Batches were lost between the workers and the writer".into(),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_check() {
        assert!(is_zero(&[]));
        assert!(is_zero(&vec![0u8; 65536]));
        assert!(is_zero(&vec![0u8; 65536 + 7]));
        for at in [0, 7, 1023, 1024, 4095, 65535] {
            let mut buf = vec![0u8; 65536];
            buf[at] = 1;
            assert!(!is_zero(&buf), "{at}");
        }
        let mut odd = vec![0u8; 1030];
        odd[1029] = 0x80;
        assert!(!is_zero(&odd));
    }

    #[test]
    fn runs_merge_clusters() {
        assert_eq!(
            cluster_runs(&[0..1, 10..20, 65536..65537], 65536),
            vec![0..2]
        );
        assert_eq!(
            cluster_runs(&[100..200, 3 << 16..(5 << 16) + 1], 65536),
            vec![0..1, 3..6]
        );
        assert_eq!(cluster_runs(&[], 65536), vec![]);
    }

    fn roundtrip(compression: Compression, level: i32) {
        let cs = 65536;
        let mut compressor = Compressor::new(compression, level).unwrap();
        let mut scratch = vec![0u8; cs - 1];
        let text: Vec<u8> = (0..cs).map(|i| b"hello qcow2 "[i % 12]).collect();
        let len = compressor.compress(&text, &mut scratch).unwrap().unwrap();
        let restored = match compression {
            Compression::Zstd => zstd::bulk::decompress(&scratch[..len], cs).unwrap(),
            _ => {
                let mut inflate = flate2::Decompress::new_with_window_bits(false, 12);
                let mut out = vec![0u8; cs];
                inflate
                    .decompress(&scratch[..len], &mut out, flate2::FlushDecompress::Finish)
                    .unwrap();
                out
            }
        };
        assert_eq!(restored, text);
        // Twice the same: a second pass must produce identical bytes.
        let again = compressor
            .compress(&text, &mut scratch.clone())
            .unwrap()
            .unwrap();
        assert_eq!(again, len);
        // Random data does not fit.
        let mut state = 0x1234_5678_9abc_def0u64;
        let random: Vec<u8> = (0..cs)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        assert_eq!(compressor.compress(&random, &mut scratch).unwrap(), None);
    }

    #[test]
    fn compressors_roundtrip_and_refuse_incompressible_data() {
        roundtrip(Compression::Zstd, 3);
        roundtrip(Compression::Zlib, 6);
    }
}
