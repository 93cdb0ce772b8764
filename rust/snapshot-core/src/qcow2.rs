//! qcow2 version 3 layout, laid out as a stream.
//!
//! qcow2 only needs clusters aligned, not ordered, so the image is laid out
//! as: the header cluster, then the guest data (compressed clusters packed
//! back to back at byte granularity, as qemu packs them; plain clusters
//! cluster-aligned), then the L2 tables, the L1 table, the refcount blocks
//! and the refcount table. Every host offset follows from the stored size of
//! each guest cluster alone, so a sink that cannot seek gets identical bytes
//! once the sizes are known (see `capture`).
//!
//! Format reference: qemu's `docs/interop/qcow2.txt`.

use std::collections::BTreeMap;

use crate::error::Result;
use crate::options::Compression;

/// Bytes of the fixed qcow2 v3 header we write: 104 bytes of v3 fields, the
/// compression type byte and padding to a multiple of 8.
pub const HEADER_LENGTH: u32 = 112;
/// `QFI\xfb`.
const MAGIC: u32 = 0x5146_49fb;
/// Incompatible feature bit 3: the compression type field is not zlib.
pub const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
/// L1/L2 flag: the cluster's refcount is exactly one (may be written in place).
pub const OFLAG_COPIED: u64 = 1 << 63;
/// L2 flag: the cluster is compressed.
pub const OFLAG_COMPRESSED: u64 = 1 << 62;
/// log2 of the refcount width in bits: 16-bit refcounts, qemu's default.
pub const REFCOUNT_ORDER: u32 = 4;
/// Smallest cluster size the engine writes (qemu allows 512 bytes, but
/// small clusters make large metadata and slow images).
pub const MIN_CLUSTER_SIZE: u32 = 64 * 1024;
/// Largest cluster size qemu accepts.
pub const MAX_CLUSTER_SIZE: u32 = 2 * 1024 * 1024;

/// Destination of the image bytes, in order. Implemented by the engine's
/// emitter and, for tests, by `Vec<u8>`.
pub trait Emit {
    /// Appends `bytes`.
    fn emit(&mut self, bytes: &[u8]) -> Result<()>;
    /// Appends `len` zero bytes.
    fn emit_zeros(&mut self, len: u64) -> Result<()>;
}

impl Emit for Vec<u8> {
    fn emit(&mut self, bytes: &[u8]) -> Result<()> {
        self.extend_from_slice(bytes);
        Ok(())
    }

    fn emit_zeros(&mut self, len: u64) -> Result<()> {
        self.resize(self.len() + len as usize, 0);
        Ok(())
    }
}

/// The L2 descriptor of a compressed cluster of `len` bytes at host byte
/// `offset`: bits 0..x-1 hold the offset, bits x..61 the number of 512-byte
/// sectors the data touches beyond the first, with x = 62 - (cluster_bits - 8).
pub fn compressed_descriptor(cluster_bits: u32, offset: u64, len: u64) -> u64 {
    debug_assert!(len > 0);
    let x = 62 - (cluster_bits - 8);
    let sectors = ((offset + len - 1) >> 9) - (offset >> 9);
    debug_assert!(
        sectors < 1 << (cluster_bits - 8),
        "compressed cluster too large for its descriptor"
    );
    debug_assert!(
        offset < 1 << x,
        "host offset too large for a compressed descriptor"
    );
    OFLAG_COMPRESSED | (sectors << x) | offset
}

/// Where the metadata goes, computed from the data area's end and the number
/// of L2 tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaPlan {
    /// Host offset where the metadata area starts (cluster-aligned end of data).
    pub meta_start: u64,
    /// Number of L2 tables, one cluster each, from `meta_start`.
    pub l2_tables: u64,
    /// Entries of the L1 table.
    pub l1_entries: u64,
    /// Host offset of the L1 table.
    pub l1_offset: u64,
    /// Clusters of the L1 table.
    pub l1_clusters: u64,
    /// Host offset of the first refcount block.
    pub blocks_offset: u64,
    /// Number of refcount blocks.
    pub blocks: u64,
    /// Host offset of the refcount table.
    pub table_offset: u64,
    /// Clusters of the refcount table.
    pub table_clusters: u64,
    /// Clusters in the whole image.
    pub total_clusters: u64,
}

/// Number of refcount blocks and refcount table clusters needed by an image
/// of `fixed` clusters plus the refcount structures themselves, which must
/// count themselves too: grown until a fixed point is reached.
pub fn refcount_sizing(cluster_bits: u32, fixed: u64) -> (u64, u64) {
    let cs = 1u64 << cluster_bits;
    let refs_per_block = (cs * 8) >> REFCOUNT_ORDER;
    let (mut blocks, mut table) = (0u64, 0u64);
    loop {
        let total = fixed + blocks + table;
        let need_blocks = total.div_ceil(refs_per_block);
        let need_table = (need_blocks * 8).div_ceil(cs);
        if need_blocks == blocks && need_table == table {
            return (blocks, table);
        }
        // Both only grow, and slowly (one block covers thousands of
        // clusters), so this ends in two or three rounds.
        (blocks, table) = (need_blocks.max(blocks), need_table.max(table));
    }
}

/// Host clusters of the data area that `stored` stored guest clusters can
/// take: one each (a compressed cluster is shorter than a host cluster, a
/// plain one exactly one), plus the padding the packer may insert (before a
/// plain cluster once 4 MiB of them waited, and when a host cluster reached
/// 65535 references), plus one for the last partial cluster.
fn host_clusters_bound(stored: u64) -> u64 {
    stored + stored / 32 + 2
}

/// Most bytes of memory an image's layout takes, computed from sizes alone
/// (before the disk is read) by [`memory_bound`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBound {
    /// Held by the [`Layout`] from the first stored cluster to the end: one
    /// L2 table per table the clusters to read touch (the last one trimmed
    /// to the disk's end) and two bytes of reference count per host cluster.
    pub layout: u64,
    /// Allocated besides by [`Layout::emit_metadata`], at the very end: the
    /// L1 table, the refcount table and one cluster of scratch.
    pub emit: u64,
}

/// The [`MemoryBound`] of an image of a disk of `virtual_size` bytes whose
/// clusters that may be stored are those of `runs` (guest cluster indices,
/// sorted and not overlapping).
pub fn memory_bound(
    cluster_size: u32,
    virtual_size: u64,
    runs: &[std::ops::Range<u64>],
) -> MemoryBound {
    let cs = u64::from(cluster_size);
    let cb = cluster_size.trailing_zeros();
    let per_table = cs / 8;
    let guest_clusters = virtual_size.next_multiple_of(512).div_ceil(cs);
    let mut l2_bytes = 0u64;
    let mut last_table = None;
    let mut stored = 0u64;
    for run in runs {
        let run = run.start.min(guest_clusters)..run.end.min(guest_clusters);
        if run.is_empty() {
            continue;
        }
        stored += run.end - run.start;
        let last = (run.end - 1) / per_table;
        // Runs are sorted: a table shared with the previous run counts once.
        let first = match run.start / per_table {
            first if last_table == Some(first) => first + 1,
            first => first,
        };
        for table in first..=last {
            let entries = per_table.min(guest_clusters - table * per_table);
            // The entries, plus the box's and the map node's share.
            l2_bytes += entries * 8 + 64;
        }
        last_table = Some(last);
    }
    let host = host_clusters_bound(stored);
    let tables = guest_clusters.div_ceil(per_table);
    let l1_clusters = (tables * 8).div_ceil(cs);
    let (_, table_clusters) = refcount_sizing(cb, 1 + host + tables + l1_clusters);
    MemoryBound {
        layout: l2_bytes + host * 2,
        emit: (l1_clusters + table_clusters + 1) << cb,
    }
}

/// Assigns host offsets to guest clusters and keeps what the metadata needs.
/// Depends on stored sizes only, never on the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    cluster_bits: u32,
    virtual_size: u64,
    compression: Compression,
    /// Next free byte of the data area.
    cursor: u64,
    /// Dense L2 tables (host-endian entries) by L2 table index; only tables
    /// with at least one allocated cluster exist.
    l2: BTreeMap<u64, Box<[u64]>>,
    /// References to each host cluster of the data area (index 0 is host
    /// cluster 1, the first after the header).
    data_refs: Vec<u16>,
    /// Guest clusters placed.
    stored: u64,
    /// Set while the layout is laid out a second time (see [`Layout::replay`]).
    replay: Option<Replay>,
}

/// The state of a second placement of the same clusters over a finished
/// layout: each placement is checked against the entry recorded the first
/// time instead of being recorded again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Replay {
    /// Where the first placement ended.
    end: u64,
    /// Clusters placed again so far.
    placed: u64,
    /// Clusters the first placement stored.
    stored: u64,
    /// Whether a placement differed from the first.
    differs: bool,
    /// The last host cluster referenced so far and its references: what
    /// the first placement's counts were at this point, for the decision
    /// of [`Layout::place_compressed`] to start a fresh host cluster.
    last_host: u64,
    last_refs: u16,
}

impl Layout {
    /// Starts a layout for a guest of `virtual_size` bytes with clusters of
    /// `cluster_size` bytes (a power of two, checked by the caller).
    ///
    /// The virtual size is rounded up to whole 512-byte sectors: qemu counts
    /// a qcow2 disk in sectors and would drop a partial last one.
    pub fn new(cluster_size: u32, virtual_size: u64, compression: Compression) -> Layout {
        debug_assert!(cluster_size.is_power_of_two());
        Layout {
            cluster_bits: cluster_size.trailing_zeros(),
            virtual_size: virtual_size.next_multiple_of(512),
            compression,
            cursor: u64::from(cluster_size),
            l2: BTreeMap::new(),
            data_refs: Vec::new(),
            stored: 0,
            replay: None,
        }
    }

    /// Starts placing the same clusters a second time over this finished
    /// layout, checking every placement against the first instead of
    /// recording it: a second pass over the source then needs no second
    /// layout (the metadata is held once). Finish with
    /// [`Layout::end_replay`].
    pub fn replay(mut self) -> Layout {
        self.replay = Some(Replay {
            end: self.cursor,
            placed: 0,
            stored: self.stored,
            differs: false,
            last_host: 0,
            last_refs: 0,
        });
        self.cursor = self.cluster_size();
        self
    }

    /// Ends a replay: the layout as it was, if every cluster was placed
    /// again exactly where it was the first time, else `None`.
    pub fn end_replay(mut self) -> Option<Layout> {
        let replay = self.replay.take()?;
        (!replay.differs && replay.placed == replay.stored && replay.end == self.cursor)
            .then_some(self)
    }

    /// Size of the guest disk in bytes, as the header records it.
    pub fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// L2 entries per L2 table.
    fn l2_entries(&self) -> u64 {
        self.cluster_size() / 8
    }

    /// Next free byte of the data area.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    fn set_entry(&mut self, guest: u64, entry: u64) {
        let guest_clusters = self.virtual_size.div_ceil(self.cluster_size());
        debug_assert!(guest < guest_clusters);
        if self.replay.is_some() {
            let differs = self.entry(guest) != entry;
            if let Some(replay) = &mut self.replay {
                replay.placed += 1;
                replay.differs |= differs;
            }
            return;
        }
        let per_table = self.l2_entries();
        let index = guest / per_table;
        // The last table holds only the entries the disk has: a small disk
        // does not pay for a whole cluster of them (emitted zero-padded).
        let len = per_table.min(guest_clusters - index * per_table);
        let table = self
            .l2
            .entry(index)
            .or_insert_with(|| vec![0u64; len as usize].into_boxed_slice());
        let slot = &mut table[(guest % per_table) as usize];
        debug_assert_eq!(*slot, 0, "guest cluster {guest} placed twice");
        *slot = entry;
        self.stored += 1;
    }

    /// The L2 entry of guest cluster `guest` (0 when unallocated).
    pub fn entry(&self, guest: u64) -> u64 {
        let per_table = self.l2_entries();
        self.l2
            .get(&(guest / per_table))
            .map_or(0, |table| table[(guest % per_table) as usize])
    }

    /// Makes room for the reference counts of `stored` guest clusters at
    /// once, so that the count vector does not grow by doubling past what
    /// [`memory_bound`] allows for.
    pub fn reserve(&mut self, stored: u64) {
        let host = host_clusters_bound(stored);
        self.data_refs
            .reserve_exact((host as usize).saturating_sub(self.data_refs.len()));
    }

    fn add_refs(&mut self, offset: u64, len: u64) {
        let first = offset >> self.cluster_bits;
        let last = (offset + len - 1) >> self.cluster_bits;
        if let Some(replay) = &mut self.replay {
            // The counts are final already; follow them as they grew.
            for host in first..=last {
                if host == replay.last_host {
                    replay.last_refs = replay.last_refs.saturating_add(1);
                } else {
                    (replay.last_host, replay.last_refs) = (host, 1);
                }
            }
            return;
        }
        if self.data_refs.len() < last as usize {
            self.data_refs.resize(last as usize, 0);
        }
        for host in first..=last {
            self.data_refs[host as usize - 1] += 1;
        }
    }

    /// Places guest cluster `guest`, compressed to `len` bytes (less than a
    /// cluster), at the next free byte and returns its host offset.
    pub fn place_compressed(&mut self, guest: u64, len: u32) -> u64 {
        let len = u64::from(len);
        debug_assert!(len > 0 && len < self.cluster_size());
        let mut offset = self.cursor;
        // A host cluster can count at most 65535 references (16-bit
        // refcounts): tiny frames of a constant-filled disk could exceed that
        // at large cluster sizes, so start a fresh cluster first.
        let host = offset >> self.cluster_bits;
        let refs = match &self.replay {
            Some(replay) if replay.last_host == host => Some(replay.last_refs),
            Some(_) => None,
            None => self.data_refs.get(host as usize - 1).copied(),
        };
        if offset % self.cluster_size() != 0 && refs == Some(u16::MAX) {
            offset = offset.next_multiple_of(self.cluster_size());
        }
        let entry = compressed_descriptor(self.cluster_bits, offset, len);
        self.set_entry(guest, entry);
        self.add_refs(offset, len);
        self.cursor = offset + len;
        offset
    }

    /// Places guest cluster `guest`, stored whole, at the next cluster
    /// boundary and returns its host offset.
    pub fn place_plain(&mut self, guest: u64) -> u64 {
        let cs = self.cluster_size();
        let offset = self.cursor.next_multiple_of(cs);
        self.set_entry(guest, OFLAG_COPIED | offset);
        self.add_refs(offset, cs);
        self.cursor = offset + cs;
        offset
    }

    /// Where the metadata will go, given the data placed so far.
    pub fn meta_plan(&self) -> MetaPlan {
        let cs = self.cluster_size();
        let cb = self.cluster_bits;
        let meta_start = self.cursor.next_multiple_of(cs);
        let guest_clusters = self.virtual_size.div_ceil(cs);
        let l1_entries = guest_clusters.div_ceil(self.l2_entries());
        // An empty disk has an empty L1 table: no cluster (qemu-img check
        // would count an unreferenced one as leaked).
        let l1_clusters = (l1_entries * 8).div_ceil(cs);
        let l2_tables = self.l2.len() as u64;
        let fixed = (meta_start >> cb) + l2_tables + l1_clusters;
        let (blocks, table_clusters) = refcount_sizing(cb, fixed);
        let l1_offset = meta_start + l2_tables * cs;
        let blocks_offset = l1_offset + l1_clusters * cs;
        let table_offset = blocks_offset + blocks * cs;
        MetaPlan {
            meta_start,
            l2_tables,
            l1_entries,
            l1_offset,
            l1_clusters,
            blocks_offset,
            blocks,
            table_offset,
            table_clusters,
            total_clusters: fixed + blocks + table_clusters,
        }
    }

    /// Total image size once the metadata is written.
    pub fn image_size(&self) -> u64 {
        self.meta_plan().total_clusters << self.cluster_bits
    }

    /// Emits the metadata: padding from the end of the data to the next
    /// cluster boundary, then L2 tables, L1 table, refcount blocks and the
    /// refcount table. The caller has emitted everything up to
    /// [`Layout::cursor`]. Returns the plan it followed.
    pub fn emit_metadata(&self, out: &mut dyn Emit) -> Result<MetaPlan> {
        let plan = self.meta_plan();
        let cs = self.cluster_size();
        let cb = self.cluster_bits;
        out.emit_zeros(plan.meta_start - self.cursor)?;
        let mut buf = vec![0u8; cs as usize];

        // L2 tables, in table order, and the L1 entries pointing at them.
        let mut l1 = vec![0u8; (plan.l1_clusters * cs) as usize];
        for (n, (&index, table)) in self.l2.iter().enumerate() {
            // A short last table leaves the rest of its cluster zero.
            buf.fill(0);
            for (dst, entry) in buf.chunks_exact_mut(8).zip(table.iter()) {
                dst.copy_from_slice(&entry.to_be_bytes());
            }
            out.emit(&buf)?;
            let host = plan.meta_start + n as u64 * cs;
            let at = index as usize * 8;
            l1[at..at + 8].copy_from_slice(&(OFLAG_COPIED | host).to_be_bytes());
        }
        out.emit(&l1)?;
        drop(l1);

        // Refcount blocks: the header, the data clusters by their reference
        // counts, and every metadata cluster once.
        let refs_per_block = (cs * 8) >> REFCOUNT_ORDER;
        let data_clusters_end = plan.meta_start >> cb;
        for block in 0..plan.blocks {
            buf.fill(0);
            let first = block * refs_per_block;
            let last = (first + refs_per_block).min(plan.total_clusters);
            for cluster in first..last {
                let count = if cluster == 0 {
                    1
                } else if cluster < data_clusters_end {
                    self.data_refs
                        .get(cluster as usize - 1)
                        .copied()
                        .unwrap_or(0)
                } else {
                    1
                };
                if count != 0 {
                    let at = (cluster - first) as usize * 2;
                    buf[at..at + 2].copy_from_slice(&count.to_be_bytes());
                }
            }
            out.emit(&buf)?;
        }

        // The refcount table, pointing at the blocks.
        let mut table = vec![0u8; (plan.table_clusters * cs) as usize];
        for block in 0..plan.blocks {
            let at = block as usize * 8;
            table[at..at + 8].copy_from_slice(&(plan.blocks_offset + block * cs).to_be_bytes());
        }
        out.emit(&table)?;
        Ok(plan)
    }

    /// The header cluster (cluster 0), whole, for the metadata of
    /// [`Layout::meta_plan`].
    pub fn header(&self) -> Vec<u8> {
        let plan = self.meta_plan();
        let mut h = vec![0u8; self.cluster_size() as usize];
        let put32 =
            |h: &mut Vec<u8>, at: usize, v: u32| h[at..at + 4].copy_from_slice(&v.to_be_bytes());
        let put64 =
            |h: &mut Vec<u8>, at: usize, v: u64| h[at..at + 8].copy_from_slice(&v.to_be_bytes());
        let zstd = self.compression == Compression::Zstd;
        put32(&mut h, 0, MAGIC);
        put32(&mut h, 4, 3); // version
        // 8: backing file offset, 16: backing file name size: none.
        put32(&mut h, 20, self.cluster_bits);
        put64(&mut h, 24, self.virtual_size);
        // 32: encryption method: none.
        put32(&mut h, 36, plan.l1_entries as u32);
        put64(&mut h, 40, plan.l1_offset);
        put64(&mut h, 48, plan.table_offset);
        put32(&mut h, 56, plan.table_clusters as u32);
        // 60: snapshots: none, 64: snapshot table offset: none.
        put64(&mut h, 72, if zstd { INCOMPAT_COMPRESSION_TYPE } else { 0 });
        // 80: compatible features, 88: autoclear features: none.
        put32(&mut h, 96, REFCOUNT_ORDER);
        put32(&mut h, 100, HEADER_LENGTH);
        h[104] = u8::from(zstd); // compression type: 0 zlib (deflate), 1 zstd
        // 105..112: padding. Header extensions start at HEADER_LENGTH: only
        // the end marker (type 0, length 0), which the zeroed buffer holds.
        h
    }
}

/// Places clusters as they arrive in guest order and emits the data area.
///
/// Compressed clusters are packed at byte granularity; a plain cluster must
/// start on a cluster boundary. Rather than pad the rest of a partly filled
/// host cluster (as qemu does when compressed data follows), plain clusters
/// arriving mid-cluster wait (up to a few MiB) while later compressed
/// clusters fill the gap, and are placed when the cursor reaches a boundary.
/// The decisions depend on sizes only, so every sink gets the same bytes.
#[derive(Debug)]
pub struct Packer {
    layout: Layout,
    /// Guest clusters waiting to be stored plain, and their bytes.
    pending: Vec<u64>,
    pending_data: Vec<u8>,
    pending_cap: usize,
    /// Host offset up to which bytes have been emitted.
    emitted: u64,
}

/// Bytes of plain clusters that may wait for a cluster boundary.
pub(crate) const PENDING_BYTES: u64 = 4 * 1024 * 1024;

impl Packer {
    /// Starts packing into `layout`, which must be fresh.
    pub fn new(layout: Layout) -> Packer {
        let cs = layout.cluster_size();
        Packer {
            pending: Vec::new(),
            pending_data: Vec::new(),
            pending_cap: (PENDING_BYTES / cs).max(1) as usize,
            emitted: layout.cursor(),
            layout,
        }
    }

    fn pad_to(&mut self, offset: u64, out: &mut dyn Emit) -> Result<()> {
        debug_assert!(offset >= self.emitted);
        out.emit_zeros(offset - self.emitted)?;
        self.emitted = offset;
        Ok(())
    }

    /// Stores guest cluster `guest` compressed as `bytes` (shorter than a
    /// cluster).
    pub fn compressed(&mut self, guest: u64, bytes: &[u8], out: &mut dyn Emit) -> Result<()> {
        let offset = self.layout.place_compressed(guest, bytes.len() as u32);
        self.pad_to(offset, out)?;
        out.emit(bytes)?;
        self.emitted += bytes.len() as u64;
        if !self.pending.is_empty() && self.layout.cursor() % self.layout.cluster_size() == 0 {
            self.flush_pending(out)?;
        }
        Ok(())
    }

    /// Stores guest cluster `guest` whole; `bytes` is one full cluster.
    pub fn plain(&mut self, guest: u64, bytes: &[u8], out: &mut dyn Emit) -> Result<()> {
        debug_assert_eq!(bytes.len() as u64, self.layout.cluster_size());
        if self.pending.is_empty() && self.layout.cursor() % self.layout.cluster_size() == 0 {
            let offset = self.layout.place_plain(guest);
            self.pad_to(offset, out)?;
            out.emit(bytes)?;
            self.emitted += bytes.len() as u64;
            return Ok(());
        }
        self.pending.push(guest);
        self.pending_data.extend_from_slice(bytes);
        if self.pending.len() >= self.pending_cap {
            self.flush_pending(out)?;
        }
        Ok(())
    }

    fn flush_pending(&mut self, out: &mut dyn Emit) -> Result<()> {
        let cs = self.layout.cluster_size() as usize;
        let pending = std::mem::take(&mut self.pending);
        for (n, &guest) in pending.iter().enumerate() {
            let offset = self.layout.place_plain(guest);
            self.pad_to(offset, out)?;
            out.emit(&self.pending_data[n * cs..(n + 1) * cs])?;
            self.emitted += cs as u64;
        }
        self.pending = pending;
        self.pending.clear();
        self.pending_data.clear();
        Ok(())
    }

    /// Places what still waits and returns the finished data layout.
    pub fn finish(mut self, out: &mut dyn Emit) -> Result<Layout> {
        self.flush_pending(out)?;
        debug_assert_eq!(self.emitted, self.layout.cursor());
        Ok(self.layout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: u32 = 64 * 1024;

    fn be64(bytes: &[u8], at: usize) -> u64 {
        u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap())
    }

    fn be32(bytes: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn compressed_descriptor_counts_extra_sectors() {
        // 64 KiB clusters: x = 62 - (16 - 8) = 54.
        let mut layout = Layout::new(CS, 10 * u64::from(CS), Compression::Zstd);
        assert_eq!(layout.place_compressed(0, 1000), 65536);
        assert_eq!(layout.place_compressed(1, 20), 66536);
        assert_eq!(layout.place_compressed(2, 100), 66556);
        // 65536..66536 spans sectors 128 and 129: one additional sector.
        assert_eq!(layout.entry(0), OFLAG_COMPRESSED | (1 << 54) | 65536);
        // 66536..66556 lies within sector 129 (66048..66560): none.
        assert_eq!(layout.entry(1), OFLAG_COMPRESSED | 66536);
        // 66556..66656 crosses into sector 130: one.
        assert_eq!(layout.entry(2), OFLAG_COMPRESSED | (1 << 54) | 66556);
    }

    #[test]
    fn descriptor_field_positions_follow_cluster_bits() {
        // 2 MiB clusters: x = 62 - 13 = 49; a 512-byte aligned 1024 bytes
        // touch two sectors: one additional.
        assert_eq!(
            compressed_descriptor(21, 4 << 20, 1024),
            OFLAG_COMPRESSED | (1 << 49) | (4 << 20)
        );
        // 1 MiB clusters: x = 50. Largest data (cluster - 1 bytes at an
        // unaligned offset) still fits the field.
        let d = compressed_descriptor(20, (1 << 20) + 511, (1 << 20) - 1);
        assert_eq!((d >> 50) & 0xfff, 2048);
        assert_eq!(d & ((1 << 50) - 1), (1 << 20) + 511);
    }

    #[test]
    fn plain_clusters_are_aligned_after_packed_data() {
        let mut layout = Layout::new(CS, 10 * u64::from(CS), Compression::Zlib);
        layout.place_compressed(0, 65_000); // host cluster 1
        layout.place_compressed(1, 20_000); // spans host clusters 1 and 2
        let plain = layout.place_plain(3);
        assert_eq!(plain, 3 * 65536);
        assert_eq!(layout.entry(3), OFLAG_COPIED | (3 * 65536));
        assert_eq!(layout.data_refs, vec![2, 1, 1]);
    }

    #[test]
    fn refcount_sizing_covers_itself() {
        // 64 KiB clusters, 16-bit refcounts: 32768 refcounts per block.
        assert_eq!(refcount_sizing(16, 1), (1, 1));
        // 32766 + one block + one table cluster = 32768: one block holds all.
        assert_eq!(refcount_sizing(16, 32766), (1, 1));
        // One more and the block must count 32769 clusters: a second block.
        assert_eq!(refcount_sizing(16, 32767), (2, 1));
        assert_eq!(refcount_sizing(16, 32768), (2, 1));
        // 8192 entries fit one table cluster; beyond, two.
        let (blocks, table) = refcount_sizing(16, 8192 * 32768);
        assert_eq!(table, 2);
        assert!(blocks * 32768 >= 8192 * 32768 + blocks + table);
        for fixed in [1u64, 100, 32766, 32767, 32768, 65533, 65534, 65535, 1 << 20] {
            for bits in [16, 20, 21] {
                let (blocks, table) = refcount_sizing(bits, fixed);
                let per_block = (1u64 << bits) * 8 / 16;
                assert!(
                    blocks * per_block >= fixed + blocks + table,
                    "{bits} {fixed}"
                );
                assert!(table << bits >= blocks * 8, "{bits} {fixed}");
                // Minimal: one block fewer would not do.
                assert!(
                    (blocks - 1) * per_block < fixed + blocks - 1 + table,
                    "{bits} {fixed}"
                );
            }
        }
    }

    #[test]
    fn metadata_follows_data_and_counts_every_cluster() {
        let mut layout = Layout::new(CS, 2 << 30, Compression::None);
        for guest in 0..32768 {
            layout.place_plain(guest);
        }
        let mut meta = Vec::new();
        let plan = layout.emit_metadata(&mut meta).unwrap();
        assert_eq!(plan.meta_start, 32769 * 65536);
        // 2 GiB in 64 KiB clusters: 32768 entries, 8192 per L2 table.
        assert_eq!(plan.l2_tables, 4);
        assert_eq!(plan.l1_entries, 4);
        // header + 32768 data + 4 L2 + 1 L1 = 32774 clusters, plus
        // refcount structures: two blocks and one table cluster.
        assert_eq!((plan.blocks, plan.table_clusters), (2, 1));
        assert_eq!(plan.total_clusters, 32777);
        assert_eq!(
            meta.len() as u64,
            (plan.total_clusters << 16) - plan.meta_start
        );
        let at = |offset: u64| (offset - plan.meta_start) as usize;
        // L1 points at the L2 tables, flagged COPIED.
        assert_eq!(
            be64(&meta, at(plan.l1_offset)),
            OFLAG_COPIED | plan.meta_start
        );
        // L2 entry of guest cluster 5.
        assert_eq!(be64(&meta, 5 * 8), OFLAG_COPIED | (6 * 65536));
        // Refcount table points at both blocks; every cluster counted once.
        assert_eq!(be64(&meta, at(plan.table_offset)), plan.blocks_offset);
        assert_eq!(
            be64(&meta, at(plan.table_offset) + 8),
            plan.blocks_offset + 65536
        );
        let counts: Vec<u16> = (0..plan.blocks as usize * 32768)
            .map(|n| {
                let pos = at(plan.blocks_offset) + n * 2;
                u16::from_be_bytes([meta[pos], meta[pos + 1]])
            })
            .collect();
        assert!(
            counts[..plan.total_clusters as usize]
                .iter()
                .all(|&c| c == 1)
        );
        assert!(
            counts[plan.total_clusters as usize..]
                .iter()
                .all(|&c| c == 0)
        );

        let header = layout.header();
        assert_eq!(be64(&header, 40), plan.l1_offset);
        assert_eq!(be64(&header, 48), plan.table_offset);
        assert_eq!(be32(&header, 56), 1);
    }

    #[test]
    fn header_fields() {
        let layout = Layout::new(CS, 12345, Compression::Zstd);
        let h = layout.header();
        // Rounded up to whole sectors.
        assert_eq!(be64(&h, 24), 12800);
        assert_eq!(&h[0..4], b"QFI\xfb");
        assert_eq!(be32(&h, 4), 3);
        assert_eq!(be32(&h, 20), 16);
        assert_eq!(be64(&h, 72), INCOMPAT_COMPRESSION_TYPE);
        assert_eq!(be32(&h, 96), 4);
        assert_eq!(be32(&h, 100), HEADER_LENGTH);
        assert_eq!(h[104], 1);
        let zlib = Layout::new(CS, 12345, Compression::Zlib).header();
        assert_eq!(be64(&zlib, 72), 0);
        assert_eq!(zlib[104], 0);
    }

    #[test]
    fn packer_fills_gaps_before_placing_plain_clusters() {
        let cs = CS as usize;
        let mut packer = Packer::new(Layout::new(CS, 100 * u64::from(CS), Compression::Zstd));
        let mut out = Vec::new();
        packer.compressed(0, &vec![1u8; 40_000], &mut out).unwrap();
        // Mid-cluster: waits.
        packer.plain(1, &vec![2u8; cs], &mut out).unwrap();
        assert_eq!(out.len(), 40_000);
        // 40000 + 25536 = 65536 exactly: the boundary is reached and the
        // plain cluster follows with no padding.
        packer.compressed(2, &vec![3u8; 25_536], &mut out).unwrap();
        assert_eq!(out.len(), 65_536 + cs);
        let layout = packer.finish(&mut out).unwrap();
        assert_eq!(layout.entry(1), OFLAG_COPIED | (2 * 65536));
        assert_eq!(
            layout.entry(2),
            compressed_descriptor(16, 65536 + 40_000, 25_536)
        );
        assert_eq!(&out[65536..65536 + cs], &vec![2u8; cs][..]);
    }

    #[test]
    fn packer_pads_when_plain_clusters_pile_up() {
        let cs = CS as usize;
        let mut packer = Packer::new(Layout::new(CS, 1000 * u64::from(CS), Compression::Zstd));
        let mut out = Vec::new();
        packer.compressed(0, &[9u8; 100], &mut out).unwrap();
        for guest in 1..=64 {
            packer
                .plain(guest, &vec![guest as u8; cs], &mut out)
                .unwrap();
        }
        // 64 plain clusters (4 MiB) waited, then were placed after padding.
        assert_eq!(out.len(), 65536 + 64 * cs);
        packer.plain(65, &vec![65u8; cs], &mut out).unwrap();
        assert_eq!(out.len(), 65536 + 65 * cs);
        let layout = packer.finish(&mut out).unwrap();
        assert_eq!(layout.entry(1), OFLAG_COPIED | (2 * 65536));
        assert_eq!(layout.entry(65), OFLAG_COPIED | (66 * 65536));
        assert_eq!(&out[..100], &[9u8; 100]);
        assert!(out[100..65536].iter().all(|&b| b == 0));
    }

    #[test]
    fn packer_finish_places_waiting_clusters() {
        let cs = CS as usize;
        let mut packer = Packer::new(Layout::new(CS, 4 * u64::from(CS), Compression::Zlib));
        let mut out = Vec::new();
        packer.compressed(0, &[1u8; 10], &mut out).unwrap();
        packer.plain(3, &vec![7u8; cs], &mut out).unwrap();
        let layout = packer.finish(&mut out).unwrap();
        assert_eq!(layout.cursor(), 3 * 65536);
        assert_eq!(out.len(), 2 * cs);
        assert_eq!(layout.entry(3), OFLAG_COPIED | (2 * 65536));
    }

    #[test]
    fn short_last_table_is_emitted_zero_padded() {
        // 1.5 tables of 64 KiB clusters: the second table has 4096 entries.
        let clusters = 8192 + 4096;
        let mut layout = Layout::new(CS, clusters * u64::from(CS), Compression::None);
        for guest in [0, 8191, 8192, clusters - 1] {
            layout.place_plain(guest);
        }
        assert_eq!(layout.l2[&0].len(), 8192);
        assert_eq!(layout.l2[&1].len(), 4096);
        let mut meta = Vec::new();
        let plan = layout.emit_metadata(&mut meta).unwrap();
        assert_eq!(plan.l2_tables, 2);
        let second = &meta[65536..2 * 65536];
        assert_eq!(be64(second, 0), OFLAG_COPIED | (3 * 65536));
        assert_eq!(be64(second, 4095 * 8), OFLAG_COPIED | (4 * 65536));
        // Past the disk's end: zeros, not the first table's entry 8191.
        assert!(second[4096 * 8..].iter().all(|&b| b == 0));
    }

    /// Takes emitted bytes and forgets them.
    struct Discard;

    impl Emit for Discard {
        fn emit(&mut self, _: &[u8]) -> Result<()> {
            Ok(())
        }

        fn emit_zeros(&mut self, _: u64) -> Result<()> {
            Ok(())
        }
    }

    /// Bytes a layout holds: its L2 tables and its reference counts.
    fn held(layout: &Layout) -> u64 {
        let l2: u64 = layout.l2.values().map(|t| t.len() as u64 * 8 + 64).sum();
        l2 + layout.data_refs.capacity() as u64 * 2
    }

    #[test]
    fn memory_bound_holds_whatever_the_sizes() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for cs in [CS, 1 << 20, 2 << 20] {
            let c = u64::from(cs);
            for round in 0..20 {
                let guest_clusters = 1 + next() % 60_000;
                // Sorted runs with gaps, some sharing an L2 table.
                let mut runs = Vec::new();
                let mut at = next() % 50;
                while at < guest_clusters {
                    let end = (at + 1 + next() % 3000).min(guest_clusters);
                    runs.push(at..end);
                    at = end + next() % 20_000;
                }
                let bound = memory_bound(cs, guest_clusters * c - next() % 512, &runs);
                let mut layout = Layout::new(cs, guest_clusters * c - 511, Compression::Zstd);
                let stored: u64 = runs.iter().map(|r| r.end - r.start).sum();
                layout.reserve(stored);
                let mut packer = Packer::new(layout);
                let mut out = Discard;
                let plain = vec![7u8; cs as usize];
                for run in &runs {
                    for guest in run.clone() {
                        match next() % 4 {
                            0 => packer.plain(guest, &plain, &mut out).unwrap(),
                            1 => {} // a zero cluster: not stored
                            _ => {
                                let len = 1 + next() % (c - 1);
                                packer
                                    .compressed(guest, &plain[..len as usize], &mut out)
                                    .unwrap();
                            }
                        }
                    }
                }
                let layout = packer.finish(&mut out).unwrap();
                assert!(
                    held(&layout) <= bound.layout,
                    "{cs} round {round}: holds {} > bound {}",
                    held(&layout),
                    bound.layout
                );
                let plan = layout.meta_plan();
                let emit = (plan.l1_clusters + plan.table_clusters + 1) * c;
                assert!(
                    emit <= bound.emit,
                    "{cs} round {round}: {emit} > {}",
                    bound.emit
                );
            }
        }
    }

    #[test]
    fn memory_bound_of_a_full_disk() {
        // 16 TiB in 64 KiB clusters, every cluster read: 8 bytes of L2 and
        // (at most a little over) 2 of reference count per cluster.
        let clusters = (16u64 << 40) >> 16;
        let bound = memory_bound(CS, 16 << 40, std::slice::from_ref(&(0..clusters)));
        let l2 = clusters * 8 + clusters / 8192 * 64;
        assert!(bound.layout >= l2 + clusters * 2, "{bound:?}");
        assert!(
            bound.layout <= l2 + clusters * 2 * 33 / 32 + 64,
            "{bound:?}"
        );
        // A sparse 2 TiB disk holding 8 GiB in one stretch needs what 8 GiB need.
        let data = (8u64 << 30) >> 16;
        let sparse = memory_bound(CS, 2 << 40, std::slice::from_ref(&(1000..1000 + data)));
        let dense = memory_bound(CS, 8 << 30, std::slice::from_ref(&(1000..1000 + data)));
        assert!(
            sparse.layout <= dense.layout + 2 * (8 * 8192 + 64),
            "{sparse:?} {dense:?}"
        );
        // Nothing to read: nothing held.
        assert!(memory_bound(CS, 2 << 40, &[]).layout <= 4);
    }

    /// Places `sizes` (0: plain) in guest order and returns the layout.
    fn placed(layout: Layout, sizes: &[u32]) -> Layout {
        let cs = layout.cluster_size() as usize;
        let mut packer = Packer::new(layout);
        let plain = vec![5u8; cs];
        for (guest, &len) in sizes.iter().enumerate() {
            match len {
                0 => packer.plain(guest as u64, &plain, &mut Discard).unwrap(),
                n => packer
                    .compressed(guest as u64, &plain[..n as usize], &mut Discard)
                    .unwrap(),
            }
        }
        packer.finish(&mut Discard).unwrap()
    }

    #[test]
    fn replay_checks_every_placement_against_the_first() {
        let sizes: Vec<u32> = (0..500u32)
            .map(|n| if n % 7 == 0 { 0 } else { 1 + n * 97 % 60_000 })
            .collect();
        let first = placed(
            Layout::new(CS, 500 * u64::from(CS), Compression::Zstd),
            &sizes,
        );
        let again = placed(first.clone().replay(), &sizes).end_replay();
        assert_eq!(again.as_ref(), Some(&first));
        // One size differs: refused.
        let mut other = sizes.clone();
        other[123] += 1;
        assert!(
            placed(first.clone().replay(), &other)
                .end_replay()
                .is_none()
        );
        // A cluster stored plain instead of compressed: refused.
        let mut other = sizes.clone();
        other[3] = 0;
        assert!(
            placed(first.clone().replay(), &other)
                .end_replay()
                .is_none()
        );
        // One cluster fewer: refused.
        assert!(
            placed(first.clone().replay(), &sizes[..499])
                .end_replay()
                .is_none()
        );
    }

    #[test]
    fn replay_follows_the_reference_count_limit() {
        // As in refcount_never_overflows: the first placement moved to a
        // fresh host cluster at 65535 references; the replay, whose counts
        // are final from the start, must move at the same cluster.
        let cs = 2 * 1024 * 1024u32;
        let sizes = vec![16u32; 70_000];
        let first = placed(
            Layout::new(cs, 70_000 * u64::from(cs), Compression::Zstd),
            &sizes,
        );
        assert_eq!(first.data_refs[0], u16::MAX);
        let again = placed(first.clone().replay(), &sizes).end_replay();
        assert_eq!(again.as_ref(), Some(&first));
    }

    #[test]
    fn refcount_never_overflows() {
        // 2 MiB clusters of a constant-filled guest compress to a few bytes:
        // more than 65535 of them would land in one host cluster.
        let cs = 2 * 1024 * 1024u32;
        let mut layout = Layout::new(cs, 70_000 * u64::from(cs), Compression::Zstd);
        for guest in 0..70_000 {
            layout.place_compressed(guest, 16);
        }
        assert_eq!(layout.data_refs[0], u16::MAX);
        assert!(layout.data_refs[1] > 0);
        assert_eq!(layout.entry(65_535) & ((1 << 49) - 1), 2 * u64::from(cs));
    }
}
