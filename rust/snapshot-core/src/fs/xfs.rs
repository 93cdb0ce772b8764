//! XFS: everything the free-space btrees do not list as free is kept.
//!
//! For each allocation group the AGF is read and its by-block-number free
//! space btree walked (v5 `AB3B` blocks with CRCs, v4 `ABTB`); the free
//! extents are the only parts skipped, so AG headers, the free list, the
//! log, inodes, directories and data are all kept. Checks: superblock, AGF
//! and btree block CRCs, magic numbers, levels, owners, self-addresses,
//! sorted non-overlapping records that match the AGF's free count. Valid
//! CRCs only prove each tree is the one written, so the trees are checked
//! against each other too: the by-size btree must list the same extents, and
//! with `rmapbt` no free extent may overlap a reverse-mapping record.
//!
//! The log must be clean (a dirty log means the on-disk btrees may be
//! stale): the log head is found as the kernel does (cycle numbers, binary
//! search, a verification window around it), and the record before it must
//! be a lone unmount record ending exactly at the head, with no newer record
//! after it. Anything else, an external log, `sb_inprogress`, log-incompat
//! features or `needsrepair` make the partition read whole.

use std::ops::Range;

use super::crc::crc32c;
use super::field::{be16, be32, be64, le32};
use super::{ALLOCATED_ONLY, Allocation, Probe, Reason, Slice};

const SB_MAGIC: &[u8; 4] = b"XFSB";
const AGF_MAGIC: &[u8; 4] = b"XAGF";
const BNO_MAGIC_V5: &[u8; 4] = b"AB3B";
const BNO_MAGIC_V4: &[u8; 4] = b"ABTB";
const CNT_MAGIC_V5: &[u8; 4] = b"AB3C";
const CNT_MAGIC_V4: &[u8; 4] = b"ABTC";
const RMAP_MAGIC: &[u8; 4] = b"RMB3";
const RO_COMPAT_RMAPBT: u32 = 0x2;
/// ftype, spinodes, meta_uuid, bigtime, nrext64, exchange-range, parent pointers.
const INCOMPAT_UNDERSTOOD: u32 = 0x1 | 0x2 | 0x4 | 0x8 | 0x20 | 0x40 | 0x80;
const INCOMPAT_META_UUID: u32 = 0x4;
const INCOMPAT_NEEDSREPAIR: u32 = 0x10;
/// finobt, rmapbt, reflink, inobtcount: extra trees, space still in the by-bno btree.
const RO_COMPAT_UNDERSTOOD: u32 = 0x1 | 0x2 | 0x4 | 0x8;
/// Deepest free-space btree accepted.
const MAX_LEVELS: u32 = 10;

const BB: u64 = 512;
const LOG_MAGIC: u32 = 0xFEED_BABE;
const XLOG_VERSION_2: u32 = 2;
const XLOG_HEADER_CYCLE_SIZE: u64 = 32 * 1024;
const XLOG_UNMOUNT_TRANS: u8 = 0x20;
/// Blocks the kernel scans around the head: eight in-core logs of 256 KiB.
const LOG_SCAN_BBS: u64 = 8 * (256 * 1024) / BB;

/// Recognises XFS by its superblock magic and plans it.
pub(crate) fn probe(slice: &Slice<'_>) -> Option<Probe> {
    let head = slice.read(0, 512).ok()?;
    if head.get(..4)? != SB_MAGIC {
        return None;
    }
    Some(Probe {
        content: "xfs".into(),
        result: plan(slice),
    })
}

struct Sb {
    block_size: u64,
    dblocks: u64,
    ag_blocks: u64,
    ag_count: u64,
    ag_blk_log: u32,
    sect_size: u64,
    v5: bool,
    uuid: Vec<u8>,
    /// The AGs carry a reverse-mapping btree.
    rmapbt: bool,
    log_start: u64,
    log_blocks: u64,
}

fn superblock(slice: &Slice<'_>) -> Result<Sb, Reason> {
    let first = slice.read(0, 512)?;
    let sect_size = u64::from(be16(&first, 0x66)?);
    if !(512..=32768).contains(&sect_size) || !sect_size.is_power_of_two() {
        return Err("invalid sector size".into());
    }
    let sb = slice.read(0, sect_size as usize)?;
    let version = be16(&sb, 0x64)? & 0xF;
    let v5 = match version {
        5 => true,
        4 => false,
        _ => return Err(format!("superblock version {version} not supported")),
    };
    if v5 {
        let mut copy = sb.clone();
        copy[0xE0..0xE4].fill(0);
        if crc32c(&copy) != le32(&sb, 0xE0)? {
            return Err("superblock checksum mismatch".into());
        }
        let incompat = be32(&sb, 0xD8)?;
        if incompat & INCOMPAT_NEEDSREPAIR != 0 {
            return Err("filesystem needs xfs_repair".into());
        }
        if incompat & !INCOMPAT_UNDERSTOOD != 0 || be32(&sb, 0xD4)? & !RO_COMPAT_UNDERSTOOD != 0 {
            return Err("unsupported feature flags".into());
        }
        if be32(&sb, 0xDC)? != 0 {
            return Err("log holds incompatible items (not cleanly unmounted)".into());
        }
    }
    if sb.get(0x7E) != Some(&0) {
        return Err("mkfs did not finish (sb_inprogress)".into());
    }
    let block_size = u64::from(be32(&sb, 0x4)?);
    if !(512..=65536).contains(&block_size)
        || !block_size.is_power_of_two()
        || block_size < sect_size
    {
        return Err("invalid block size".into());
    }
    let dblocks = be64(&sb, 0x8)?;
    let ag_blocks = u64::from(be32(&sb, 0x54)?);
    let ag_count = u64::from(be32(&sb, 0x58)?);
    let ag_blk_log = u32::from(*sb.get(0x7C).ok_or("superblock too short")?);
    if ag_blocks < 16 || ag_count == 0 || ag_blk_log > 31 || (1u64 << ag_blk_log) < ag_blocks {
        return Err("invalid allocation group geometry".into());
    }
    if dblocks <= (ag_count - 1) * ag_blocks || dblocks > ag_count * ag_blocks {
        return Err("block count disagrees with the allocation groups".into());
    }
    if dblocks
        .checked_mul(block_size)
        .is_none_or(|b| b > slice.size())
    {
        return Err("filesystem is larger than its partition".into());
    }
    // Blocks, CRCs and AGFs carry the metadata UUID, which differs when the UUID was changed.
    let uuid_at = if v5 && be32(&sb, 0xD8)? & INCOMPAT_META_UUID != 0 {
        0xF8
    } else {
        0x20
    };
    let uuid = sb
        .get(uuid_at..uuid_at + 16)
        .ok_or("superblock too short")?
        .to_vec();
    Ok(Sb {
        block_size,
        dblocks,
        ag_blocks,
        ag_count,
        ag_blk_log,
        sect_size,
        v5,
        uuid,
        rmapbt: v5 && be32(&sb, 0xD4)? & RO_COMPAT_RMAPBT != 0,
        log_start: be64(&sb, 0x30)?,
        log_blocks: u64::from(be32(&sb, 0x60)?),
    })
}

fn plan(slice: &Slice<'_>) -> Result<Allocation, Reason> {
    let sb = superblock(slice)?;
    let bs = sb.block_size;
    if sb.log_start == 0 {
        return Err("external log: cleanliness cannot be checked".into());
    }
    // Internal log location: a filesystem block number is (AG << agblklog) | block in AG.
    let log_ag = sb.log_start >> sb.ag_blk_log;
    let log_agbno = sb.log_start & ((1u64 << sb.ag_blk_log) - 1);
    let log_first = log_ag * sb.ag_blocks + log_agbno;
    if sb.log_blocks == 0
        || log_agbno + sb.log_blocks > sb.ag_blocks
        || log_first + sb.log_blocks > sb.dblocks
    {
        return Err("log lies outside the filesystem".into());
    }
    log_clean(slice, log_first * bs, sb.log_blocks * bs / BB)?;

    let mut ranges: Vec<Range<u64>> = Vec::new();
    let mut free_total = 0u64;
    for ag in 0..sb.ag_count {
        let ag_len = if ag + 1 == sb.ag_count {
            sb.dblocks - ag * sb.ag_blocks
        } else {
            sb.ag_blocks
        };
        let free = ag_free(slice, &sb, ag, ag_len)?;
        if ag == log_ag {
            let log = log_agbno..log_agbno + sb.log_blocks;
            if free.iter().any(|f| f.start < log.end && log.start < f.end) {
                return Err(format!("free space of AG {ag} overlaps the log"));
            }
        }
        // Keep the complement of the free extents.
        let base = ag * sb.ag_blocks;
        let mut cursor = 0;
        for f in &free {
            free_total += f.end - f.start;
            if f.start > cursor {
                ranges.push((base + cursor) * bs..(base + f.start) * bs);
            }
            cursor = f.end;
        }
        if cursor < ag_len {
            ranges.push((base + cursor) * bs..(base + ag_len) * bs);
        }
    }
    let used = (sb.dblocks - free_total) * bs;
    ranges.push(sb.dblocks * bs..slice.size());
    Ok(Allocation {
        ranges,
        bytes_used: Some(used),
        handling: ALLOCATED_ONLY,
    })
}

/// Free extents of one AG, in AG block numbers, sorted and checked.
fn ag_free(slice: &Slice<'_>, sb: &Sb, ag: u64, ag_len: u64) -> Result<Vec<Range<u64>>, Reason> {
    let bs = sb.block_size;
    let ag_byte = ag * sb.ag_blocks * bs;
    let agf = slice.read(ag_byte + sb.sect_size, sb.sect_size as usize)?;
    if agf.get(..4) != Some(AGF_MAGIC) || be32(&agf, 0x4)? != 1 || u64::from(be32(&agf, 0x8)?) != ag
    {
        return Err(format!("AGF of AG {ag} is not valid"));
    }
    if u64::from(be32(&agf, 0xC)?) != ag_len {
        return Err(format!("AGF of AG {ag} has a wrong length"));
    }
    if sb.v5 {
        let mut copy = agf.clone();
        copy[0xD8..0xDC].fill(0);
        if crc32c(&copy) != le32(&agf, 0xD8)? || agf.get(0x40..0x50) != Some(&sb.uuid[..]) {
            return Err(format!("AGF of AG {ag} fails its checksum"));
        }
    }
    let free_blocks = u64::from(be32(&agf, 0x34)?);
    let longest = u64::from(be32(&agf, 0x38)?);
    // Blocks the AGF's btrees hold beyond their roots: a bound on the walk
    // that stops a crafted tree with repeated pointers from running long.
    let max_blocks = u64::from(be32(&agf, 0x3C)?)
        + if sb.rmapbt {
            u64::from(be32(&agf, 0x50)?)
        } else {
            0
        }
        + u64::from(MAX_LEVELS)
        + 1;
    let tree = |index: usize, shape: &'static Shape| {
        Ok::<_, Reason>(Btree {
            shape,
            magic: if sb.v5 {
                shape.magic_v5
            } else {
                shape.magic_v4
            },
            root: u64::from(be32(&agf, 0x10 + 4 * index)?),
            levels: be32(&agf, 0x1C + 4 * index)?,
            max_blocks,
        })
    };
    // Headers occupy the first four sectors of the AG: never free.
    let headers_end = (4 * sb.sect_size).div_ceil(bs);

    let mut free: Vec<Range<u64>> = Vec::new();
    let by_block = tree(0, &BY_BLOCK)?;
    walk(slice, sb, ag, ag_len, headers_end, &by_block, |rec| {
        let start = u64::from(be32(rec, 0)?);
        let len = u64::from(be32(rec, 4)?);
        let prev_end = free.last().map_or(headers_end, |r| r.end);
        if len == 0 || start < prev_end || start + len > ag_len {
            return Err(format!(
                "free extents of AG {ag} overlap or fall outside it"
            ));
        }
        free.push(start..start + len);
        Ok(())
    })?;
    let total: u64 = free.iter().map(|r| r.end - r.start).sum();
    let max = free.iter().map(|r| r.end - r.start).max().unwrap_or(0);
    if total != free_blocks || max != longest {
        return Err(format!(
            "free-space btree of AG {ag} disagrees with its AGF counters"
        ));
    }
    if super::cross_check_enabled() {
        cross_check(slice, sb, ag, ag_len, headers_end, &free, &tree)?;
    }
    Ok(free)
}

/// The layout of one kind of per-AG btree.
struct Shape {
    /// Name in messages.
    name: &'static str,
    magic_v5: &'static [u8; 4],
    magic_v4: &'static [u8; 4],
    /// Bytes of a leaf record.
    rec_len: usize,
    /// Bytes of the keys of one node entry (low and high keys for rmapbt).
    key_len: usize,
}

const BY_BLOCK: Shape = Shape {
    name: "free-space",
    magic_v5: BNO_MAGIC_V5,
    magic_v4: BNO_MAGIC_V4,
    rec_len: 8,
    key_len: 8,
};
const BY_SIZE: Shape = Shape {
    name: "by-size free-space",
    magic_v5: CNT_MAGIC_V5,
    magic_v4: CNT_MAGIC_V4,
    rec_len: 8,
    key_len: 8,
};
/// Records: start, length, owner, offset; node keys: a low and a high key
/// of start, owner and offset (the tree may overlap, with reflink).
const RMAP: Shape = Shape {
    name: "reverse-mapping",
    magic_v5: RMAP_MAGIC,
    magic_v4: RMAP_MAGIC,
    rec_len: 24,
    key_len: 40,
};

/// One per-AG btree of an AGF.
struct Btree {
    shape: &'static Shape,
    magic: &'static [u8; 4],
    root: u64,
    levels: u32,
    /// Most blocks the walk may visit.
    max_blocks: u64,
}

/// Walks `tree` of AG `ag` depth-first in key order, checking every block
/// (magic, level, CRC, self-address, owner, UUID, record counts), and hands
/// each leaf record to `record`.
fn walk(
    slice: &Slice<'_>,
    sb: &Sb,
    ag: u64,
    ag_len: u64,
    headers_end: u64,
    tree: &Btree,
    mut record: impl FnMut(&[u8]) -> Result<(), Reason>,
) -> Result<(), Reason> {
    let bs = sb.block_size;
    let name = tree.shape.name;
    if tree.levels == 0 || tree.levels > MAX_LEVELS || tree.root == 0 || tree.root >= ag_len {
        return Err(format!("{name} btree root of AG {ag} is not valid"));
    }
    let hdr: usize = if sb.v5 { 56 } else { 16 };
    let leaf_max = (bs as usize - hdr) / tree.shape.rec_len;
    let node_max = (bs as usize - hdr) / (tree.shape.key_len + 4);
    let ag_byte = ag * sb.ag_blocks * bs;
    let mut visited = 0u64;
    let mut stack: Vec<(u64, u32)> = vec![(tree.root, tree.levels - 1)];
    while let Some((agbno, level)) = stack.pop() {
        visited += 1;
        if visited > tree.max_blocks || agbno < headers_end || agbno >= ag_len {
            return Err(format!("{name} btree of AG {ag} is malformed"));
        }
        let daddr_byte = ag_byte + agbno * bs;
        let block = slice.read(daddr_byte, bs as usize)?;
        let bad = || format!("{name} btree block {agbno} of AG {ag} is not valid");
        if block.get(..4) != Some(tree.magic) || u32::from(be16(&block, 4)?) != level {
            return Err(bad());
        }
        let numrecs = usize::from(be16(&block, 6)?);
        if sb.v5 {
            let mut copy = block.clone();
            copy[52..56].fill(0);
            if crc32c(&copy) != le32(&block, 52)?
                || be64(&block, 16)? != daddr_byte / BB
                || block.get(32..48) != Some(&sb.uuid[..])
                || u64::from(be32(&block, 48)?) != ag
            {
                return Err(bad());
            }
        }
        if level == 0 {
            // Only a root leaf (an empty tree) may be empty.
            if numrecs > leaf_max || (numrecs == 0 && level + 1 != tree.levels) {
                return Err(bad());
            }
            for rec in
                block[hdr..hdr + numrecs * tree.shape.rec_len].chunks_exact(tree.shape.rec_len)
            {
                record(rec)?;
            }
        } else {
            if numrecs == 0 || numrecs > node_max {
                return Err(bad());
            }
            // Push children right to left so the leftmost is visited first.
            for i in (0..numrecs).rev() {
                let child = u64::from(be32(&block, hdr + tree.shape.key_len * node_max + 4 * i)?);
                stack.push((child, level - 1));
            }
        }
    }
    Ok(())
}

/// Checks the by-block free extents `free` of AG `ag` against the by-size
/// btree (the same extents) and, with `rmapbt`, the reverse-mapping btree
/// (no record may own a free block): checksums prove each tree is the one
/// written, not that they agree. `tree` builds the AGF's btree `index`.
fn cross_check(
    slice: &Slice<'_>,
    sb: &Sb,
    ag: u64,
    ag_len: u64,
    headers_end: u64,
    free: &[Range<u64>],
    tree: &dyn Fn(usize, &'static Shape) -> Result<Btree, Reason>,
) -> Result<(), Reason> {
    let mut by_size: Vec<Range<u64>> = Vec::with_capacity(free.len());
    let cnt = tree(1, &BY_SIZE)?;
    walk(slice, sb, ag, ag_len, headers_end, &cnt, |rec| {
        let start = u64::from(be32(rec, 0)?);
        let len = u64::from(be32(rec, 4)?);
        by_size.push(start..start.saturating_add(len));
        Ok(())
    })?;
    by_size.sort_unstable_by_key(|r| (r.start, r.end));
    if by_size != free {
        let differs = free.iter().zip(&by_size).find(|(a, b)| a != b).map_or_else(
            || format!("{} extents by block, {} by size", free.len(), by_size.len()),
            |(a, b)| {
                format!(
                    "by block {}+{}, by size {}+{}",
                    a.start,
                    a.end - a.start,
                    b.start,
                    b.end - b.start
                )
            },
        );
        return Err(format!(
            "by-block and by-size free-space btrees of AG {ag} disagree ({differs})"
        ));
    }
    if !sb.rmapbt {
        return Ok(());
    }
    let mut owned: Vec<Range<u64>> = Vec::new();
    let rmap = tree(2, &RMAP)?;
    walk(slice, sb, ag, ag_len, headers_end, &rmap, |rec| {
        let start = u64::from(be32(rec, 0)?);
        let len = u64::from(be32(rec, 4)?);
        owned.push(start..start.saturating_add(len));
        Ok(())
    })?;
    super::normalize(&mut owned, ag_len);
    let mut i = 0;
    for f in free {
        while i < owned.len() && owned[i].end <= f.start {
            i += 1;
        }
        if let Some(o) = owned.get(i).filter(|o| o.start < f.end) {
            let block = o.start.max(f.start);
            return Err(format!(
                "free-space btree of AG {ag} lists block {block} free, the reverse-mapping btree says it is in use"
            ));
        }
    }
    Ok(())
}

/// The internal log, in 512-byte basic blocks.
struct Log<'a, 'b> {
    slice: &'a Slice<'b>,
    start: u64,
    bbs: u64,
}

impl Log<'_, '_> {
    /// Reads `count` basic blocks from `first` (no wrapping).
    fn read(&self, first: u64, count: u64) -> Result<Vec<u8>, Reason> {
        self.slice
            .read(self.start + first * BB, (count * BB) as usize)
    }

    /// The cycle number stamped on a basic block (a record header keeps it in `h_cycle`).
    fn cycle_of(block: &[u8]) -> Result<u32, Reason> {
        let word = be32(block, 0)?;
        if word == LOG_MAGIC {
            be32(block, 4)
        } else {
            Ok(word)
        }
    }

    fn cycle(&self, b: u64) -> Result<u32, Reason> {
        Self::cycle_of(&self.read(b, 1)?)
    }

    /// First block in `first..first+count` whose cycle is `cycle`, if any.
    fn find_cycle(&self, first: u64, count: u64, cycle: u32) -> Result<Option<u64>, Reason> {
        let mut b = first;
        while b < first + count {
            let n = (first + count - b).min(LOG_SCAN_BBS);
            let buf = self.read(b, n)?;
            for (i, bb) in buf.chunks_exact(BB as usize).enumerate() {
                if Self::cycle_of(bb)? == cycle {
                    return Ok(Some(b + i as u64));
                }
            }
            b += n;
        }
        Ok(None)
    }

    /// The log head (first block the next write would use), as the kernel's
    /// `xlog_find_head` finds it.
    fn head(&self) -> Result<u64, Reason> {
        let n = self.bbs;
        let first_cycle = self.cycle(0)?;
        if first_cycle == 0 {
            return Err("log never written".into());
        }
        let last_cycle = self.cycle(n - 1)?;
        let (mut head, stop) = if last_cycle == 0 {
            // Not wrapped yet: the head is the first block still at cycle 0.
            (self.search(0, n - 1, 0)?, 0)
        } else if first_cycle == last_cycle {
            (n, last_cycle.wrapping_sub(1))
        } else if first_cycle == last_cycle.wrapping_add(1) {
            (self.search(0, n - 1, last_cycle)?, last_cycle)
        } else {
            return Err("log cycle numbers are inconsistent".into());
        };
        // Torn writes may leave holes just before the head: move back to the first one.
        let scan = LOG_SCAN_BBS.min(n);
        if head >= scan {
            if let Some(b) = self.find_cycle(head - scan, scan, stop)? {
                head = b;
            }
        } else {
            if let Some(b) =
                self.find_cycle(n - (scan - head), scan - head, stop.wrapping_sub(1))?
            {
                return Ok(b);
            }
            if let Some(b) = self.find_cycle(0, head, stop)? {
                head = b;
            }
        }
        Ok(if head == n { 0 } else { head })
    }

    /// Binary search between `first` (not at `cycle`) and `last` (at `cycle`)
    /// for the first block at `cycle`, as `xlog_find_cycle_start`.
    fn search(&self, mut first: u64, mut last: u64, cycle: u32) -> Result<u64, Reason> {
        let mut mid = (first + last) / 2;
        while mid != first && mid != last {
            if self.cycle(mid)? == cycle {
                last = mid;
            } else {
                first = mid;
            }
            mid = (first + last) / 2;
        }
        Ok(last)
    }
}

/// Checks that the log at byte `start` of the partition, `bbs` basic blocks long, is clean.
fn log_clean(slice: &Slice<'_>, start: u64, bbs: u64) -> Result<(), Reason> {
    if bbs < 8 {
        return Err("log too small".into());
    }
    let log = Log { slice, start, bbs };
    let head = log.head()?;
    let wrap = |b: u64| b % bbs;

    // The last record header before the head (at most one big record back).
    let mut found = None;
    for back in 1..=LOG_SCAN_BBS.min(bbs) {
        let b = wrap(head + bbs - back);
        let block = log.read(b, 1)?;
        if be32(&block, 0)? == LOG_MAGIC {
            found = Some((b, block));
            break;
        }
    }
    let dirty = || Err::<(), Reason>("log not clean (needs replay by mounting)".into());
    let Some((rec, header)) = found else {
        return dirty();
    };
    let cycle = be32(&header, 4)?;
    let len = u64::from(be32(&header, 12)?);
    let lsn = be64(&header, 16)?;
    let ops = be32(&header, 40)?;
    let size = u64::from(be32(&header, 320)?);
    let hblks = if be32(&header, 8)? & XLOG_VERSION_2 != 0 && size > XLOG_HEADER_CYCLE_SIZE {
        size.div_ceil(XLOG_HEADER_CYCLE_SIZE)
    } else {
        1
    };
    if lsn != (u64::from(cycle) << 32 | rec) || len > bbs * BB {
        return Err("log record header is not valid".into());
    }
    if wrap(rec + hblks + len.div_ceil(BB)) != head || ops != 1 {
        return dirty();
    }
    let op = log.read(wrap(rec + hblks), 1)?;
    if op
        .get(9)
        .is_none_or(|flags| flags & XLOG_UNMOUNT_TRANS == 0)
    {
        return dirty();
    }
    // Nothing newer may follow the head: blocks from the head to the
    // physical end belong to the previous pass, so a record there stamped
    // with the current pass's cycle means the head estimate is wrong.
    let pass = if rec + hblks + len.div_ceil(BB) >= bbs {
        cycle.wrapping_add(1)
    } else {
        cycle
    };
    let end = bbs.min(head + LOG_SCAN_BBS);
    let mut b = head;
    while b < end {
        let n = (end - b).min(LOG_SCAN_BBS);
        let buf = log.read(b, n)?;
        for bb in buf.chunks_exact(BB as usize) {
            if be32(bb, 0)? == LOG_MAGIC && be32(bb, 4)? == pass {
                return Err("log has records past its apparent head".into());
            }
        }
        b += n;
    }
    Ok(())
}
