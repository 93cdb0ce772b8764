//! Cross-check of ext block bitmaps against the inodes that use blocks.
//!
//! Checksums and free counts only prove that a bitmap is the one the
//! filesystem wrote, not that it is right: a bitmap with a file's blocks
//! cleared and as many other bits set passes both, and trusting it would
//! drop the file. So, before anything is skipped, every in-use inode is read
//! and every block it refers to (data, block map indirect blocks, extent
//! tree index and leaf blocks, its extended attribute block) must be marked
//! in use; partclone and e2image trust the bitmaps here.
//!
//! Which inodes count is e2fsck's pass 1: every inode with a link count
//! (its `i_dtime` does not matter then), plus the bad blocks inode. Only the
//! part of each inode table a reader looks at is read: nothing of groups
//! with `INODE_UNINIT`, nothing past `bg_itable_unused` (both when the
//! descriptors carry checksums), and no table block whose inodes are all
//! free in the inode bitmap. Inline data, fast symlinks and device, FIFO
//! and socket inodes refer to no data blocks.

use std::collections::HashSet;
use std::ops::Range;

use super::{BG_INODE_UNINIT, Csum, Desc, Geometry, MAX_BATCH_BYTES};
use crate::fs::crc::crc32c_update;
use crate::fs::field::{le16, le32};
use crate::fs::{Reason, Slice};

const S_IFMT: u16 = 0xF000;
const S_IFREG: u16 = 0x8000;
const S_IFDIR: u16 = 0x4000;
const S_IFLNK: u16 = 0xA000;
const EXTENTS_FL: u32 = 0x0008_0000;
const INLINE_DATA_FL: u32 = 0x1000_0000;
const EXTENT_MAGIC: u16 = 0xF30A;
/// Deepest extent tree accepted (the kernel's limit is 5 levels under the root).
const MAX_EXTENT_DEPTH: u16 = 5;
/// Inode 1 lists bad blocks; it has no link count but its blocks are in use.
const BAD_BLOCKS_INO: u32 = 1;
/// Inode 7 reserves descriptor blocks for growing the filesystem.
const RESIZE_INO: u32 = 7;
/// Bytes of `i_block`: 15 block pointers or an extent root, or inline data.
const I_BLOCK_LEN: usize = 60;

/// Blocks that in-use inodes refer to.
#[derive(Debug, Default)]
pub(super) struct Refs {
    /// Block ranges and the inode referring to each, sorted by first block.
    pub(super) blocks: Vec<(Range<u64>, u32)>,
    /// How many in-use inodes were read.
    pub(super) inodes: u64,
}

/// Reads every in-use inode and collects the blocks it refers to.
pub(super) fn referenced(
    slice: &Slice<'_>,
    geo: &Geometry,
    descs: &[Desc],
) -> Result<Refs, Reason> {
    let bs = geo.block_size;
    let ipg = geo.inodes_per_group;
    // Inodes of each group a reader would look at.
    let scanned: Vec<u64> = descs
        .iter()
        .map(|d| match geo.csum {
            Csum::None => ipg,
            _ if d.flags & BG_INODE_UNINIT != 0 => 0,
            _ => ipg - d.itable_unused,
        })
        .collect();
    let wanted: Vec<(u64, u64)> = descs
        .iter()
        .enumerate()
        .filter(|&(g, _)| scanned[g] > 0)
        .map(|(g, d)| (d.inode_bitmap, g as u64))
        .collect();
    let mut table_runs: Vec<(Range<u64>, u64)> = Vec::new();
    for_each_block(slice, bs, wanted, |g, bitmap| {
        let desc = &descs[g as usize];
        let map = bitmap
            .get(..(ipg as usize).div_ceil(8))
            .ok_or("inode bitmap shorter than a group")?;
        if let Csum::Crc32c(seed) = geo.csum {
            let mask = if geo.desc_size >= 0x3C {
                u32::MAX
            } else {
                0xFFFF
            };
            if crc32c_update(seed, &map[..ipg as usize / 8]) & mask != desc.inode_bitmap_csum {
                return Err(format!("inode bitmap of group {g} checksum mismatch"));
            }
        }
        // Table blocks holding at least one inode the bitmap marks in use.
        let per_block = bs / geo.inode_size;
        let set = |i: u64| map[(i / 8) as usize] & (1 << (i % 8)) != 0;
        for k in 0..(scanned[g as usize] * geo.inode_size).div_ceil(bs) {
            let first = k * per_block;
            let last = (first + per_block).min(scanned[g as usize]);
            if (first..last).any(set) {
                let block = desc.inode_table + k;
                match table_runs.last_mut() {
                    Some((run, rg))
                        if *rg == g
                            && run.end == block
                            && (run.end - run.start + 1) * bs <= MAX_BATCH_BYTES =>
                    {
                        run.end += 1
                    }
                    _ => table_runs.push((block..block + 1, g)),
                }
            }
        }
        Ok(())
    })?;

    let mut refs = Refs::default();
    let mut visited = HashSet::new();
    let isz = geo.inode_size as usize;
    for (run, g) in table_runs {
        let desc = &descs[g as usize];
        let buf = slice.read(run.start * bs, ((run.end - run.start) * bs) as usize)?;
        let first_index = (run.start - desc.inode_table) * bs / geo.inode_size;
        for (k, raw) in buf.chunks_exact(isz).enumerate() {
            let index = first_index + k as u64;
            if index >= scanned[g as usize] {
                break;
            }
            let ino = u32::try_from(g * ipg + index + 1).map_err(|_| "inode number overflows")?;
            if le16(raw, 0x1A)? == 0 && ino != BAD_BLOCKS_INO {
                continue;
            }
            refs.inodes += 1;
            let mut blocks = Vec::new();
            inode_blocks(slice, geo, ino, raw, &mut visited, &mut blocks)?;
            refs.blocks.extend(blocks.into_iter().map(|r| (r, ino)));
        }
    }
    refs.blocks.sort_unstable_by_key(|(r, _)| r.start);
    Ok(refs)
}

/// Reads the blocks `wanted` lists as (block, group), adjacent ones in one
/// read (flex_bg packs bitmaps together), and hands each to `each`.
pub(super) fn for_each_block(
    slice: &Slice<'_>,
    bs: u64,
    mut wanted: Vec<(u64, u64)>,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), Reason>,
) -> Result<(), Reason> {
    wanted.sort_unstable();
    let mut i = 0;
    while i < wanted.len() {
        let mut j = i + 1;
        while j < wanted.len()
            && wanted[j].0 == wanted[j - 1].0 + 1
            && (j - i + 1) as u64 * bs <= MAX_BATCH_BYTES
        {
            j += 1;
        }
        let buf = slice.read(wanted[i].0 * bs, ((j - i) as u64 * bs) as usize)?;
        for (k, &(_, g)) in wanted[i..j].iter().enumerate() {
            each(g, &buf[k * bs as usize..(k + 1) * bs as usize])?;
        }
        i = j;
    }
    Ok(())
}

/// The blocks inode `ino` (its on-disk bytes `raw`) refers to, appended to
/// `out`. `visited` holds every map block seen so far: a block map or
/// extent tree block reached twice (a loop, or shared by two inodes) is an
/// error, which also bounds the work on a crafted filesystem.
fn inode_blocks(
    slice: &Slice<'_>,
    geo: &Geometry,
    ino: u32,
    raw: &[u8],
    visited: &mut HashSet<u64>,
    out: &mut Vec<Range<u64>>,
) -> Result<(), Reason> {
    let mode = le16(raw, 0)?;
    let flags = le32(raw, 0x20)?;
    let size = u64::from(le32(raw, 0x4)?) | u64::from(le32(raw, 0x6C)?) << 32;
    let i_block = raw.get(0x28..0x28 + I_BLOCK_LEN).ok_or("inode too short")?;
    // The extended attribute block (the high half only with 64-bit block numbers).
    let acl_hi = if geo.desc_size >= 64 {
        u64::from(le16(raw, 0x76)?)
    } else {
        0
    };
    let acl = u64::from(le32(raw, 0x68)?) | acl_hi << 32;
    if acl != 0 {
        push(geo, ino, acl, 1, out)?;
    }
    let holds_blocks = match mode & S_IFMT {
        _ if ino == BAD_BLOCKS_INO => true,
        S_IFREG | S_IFDIR => flags & INLINE_DATA_FL == 0,
        // A fast symlink keeps its target in i_block (e2fsprogs' rule: a size
        // under 60 bytes), unless it is mapped by extents.
        S_IFLNK => {
            flags & INLINE_DATA_FL == 0
                && (flags & EXTENTS_FL != 0 || size == 0 || size >= I_BLOCK_LEN as u64)
        }
        // Devices, FIFOs and sockets keep device numbers or nothing there.
        _ => false,
    };
    if !holds_blocks {
        return Ok(());
    }
    if ino == RESIZE_INO && flags & EXTENTS_FL == 0 {
        // The resize inode's double indirect block lists the reserved
        // descriptor blocks, which list their backups: all metadata the
        // planner keeps and checks against the bitmaps already. Walking them
        // would cost one read per reserved block.
        let dind = u64::from(le32(i_block, 4 * 13)?);
        if dind != 0 {
            push(geo, ino, dind, 1, out)?;
        }
        return Ok(());
    }
    if flags & EXTENTS_FL != 0 {
        let mut extents = Vec::new();
        extent_tree(slice, geo, i_block, visited, &mut extents, out)
            .map_err(|()| format!("extent tree of inode {ino} is not valid"))?;
        for (_, physical, len) in extents {
            push(geo, ino, physical, len, out)?;
        }
    } else {
        block_map(slice, geo, ino, i_block, visited, out)?;
    }
    Ok(())
}

/// Adds `len` blocks from `first` to `out`, merged with the last range when
/// they follow it, after checking they lie inside the filesystem.
fn push(
    geo: &Geometry,
    ino: u32,
    first: u64,
    len: u64,
    out: &mut Vec<Range<u64>>,
) -> Result<(), Reason> {
    if first < geo.first_data_block || first.checked_add(len).is_none_or(|end| end > geo.blocks) {
        return Err(format!(
            "inode {ino} refers to block {first} outside the filesystem"
        ));
    }
    match out.last_mut() {
        Some(last) if last.end == first => last.end += len,
        _ => out.push(first..first + len),
    }
    Ok(())
}

/// Marks `block` as a map block seen once, or says it was seen before.
fn visit(visited: &mut HashSet<u64>, ino: u32, block: u64) -> Result<(), Reason> {
    if visited.insert(block) {
        Ok(())
    } else {
        Err(format!(
            "inode {ino} reaches block map or extent tree block {block} twice"
        ))
    }
}

/// The classic ext2/3 block map: 12 direct pointers, then single, double
/// and triple indirect blocks; a zero pointer is a hole.
fn block_map(
    slice: &Slice<'_>,
    geo: &Geometry,
    ino: u32,
    i_block: &[u8],
    visited: &mut HashSet<u64>,
    out: &mut Vec<Range<u64>>,
) -> Result<(), Reason> {
    for k in 0..12 {
        let b = u64::from(le32(i_block, 4 * k)?);
        if b != 0 {
            push(geo, ino, b, 1, out)?;
        }
    }
    for (k, level) in [(12, 1), (13, 2), (14, 3)] {
        let b = u64::from(le32(i_block, 4 * k)?);
        if b != 0 {
            indirect(slice, geo, ino, b, level, visited, out)?;
        }
    }
    Ok(())
}

/// One indirect block at `level` (1: it lists data blocks) and all under it.
fn indirect(
    slice: &Slice<'_>,
    geo: &Geometry,
    ino: u32,
    block: u64,
    level: u8,
    visited: &mut HashSet<u64>,
    out: &mut Vec<Range<u64>>,
) -> Result<(), Reason> {
    push(geo, ino, block, 1, out)?;
    visit(visited, ino, block)?;
    let buf = slice.read(block * geo.block_size, geo.block_size as usize)?;
    for entry in buf.chunks_exact(4) {
        let b = u64::from(u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]));
        if b == 0 {
            continue;
        }
        if level == 1 {
            push(geo, ino, b, 1, out)?;
        } else {
            indirect(slice, geo, ino, b, level - 1, visited, out)?;
        }
    }
    Ok(())
}

/// Walks the extent tree whose root node (header and entries) is `root`:
/// every leaf extent as (logical, physical, length) goes to `extents`,
/// every index and leaf block below the root to `nodes`. Checks magic
/// numbers, entry counts, depths and block numbers as it goes; `Err(())`
/// when the tree is not valid.
pub(super) fn extent_tree(
    slice: &Slice<'_>,
    geo: &Geometry,
    root: &[u8],
    visited: &mut HashSet<u64>,
    extents: &mut Vec<(u32, u64, u64)>,
    nodes: &mut Vec<Range<u64>>,
) -> Result<(), ()> {
    extent_node(slice, geo, root, None, visited, extents, nodes)
}

fn extent_node(
    slice: &Slice<'_>,
    geo: &Geometry,
    node: &[u8],
    want_depth: Option<u16>,
    visited: &mut HashSet<u64>,
    extents: &mut Vec<(u32, u64, u64)>,
    nodes: &mut Vec<Range<u64>>,
) -> Result<(), ()> {
    let field = |r: Result<u16, Reason>| r.map_err(|_| ());
    if field(le16(node, 0))? != EXTENT_MAGIC {
        return Err(());
    }
    let entries = usize::from(field(le16(node, 2))?);
    let max = usize::from(field(le16(node, 4))?);
    let depth = field(le16(node, 6))?;
    if depth > MAX_EXTENT_DEPTH
        || want_depth.is_some_and(|d| d != depth)
        || entries > max
        || 12 + 12 * max > node.len()
    {
        return Err(());
    }
    let inside = |b: u64, len: u64| {
        b >= geo.first_data_block && b.checked_add(len).is_some_and(|end| end <= geo.blocks)
    };
    for e in (12..12 + 12 * entries).step_by(12) {
        let word = |off: usize| le32(node, e + off).map(u64::from).map_err(|_| ());
        let half = |off: usize| le16(node, e + off).map(u64::from).map_err(|_| ());
        if depth == 0 {
            // An uninitialised (preallocated) extent stores its length plus
            // 32768; its blocks are allocated all the same.
            let raw_len = half(4)?;
            let len = if raw_len > 32768 {
                raw_len - 32768
            } else {
                raw_len
            };
            let physical = half(6)? << 32 | word(8)?;
            if len == 0 || !inside(physical, len) {
                return Err(());
            }
            extents.push((word(0)? as u32, physical, len));
        } else {
            let child = half(8)? << 32 | word(4)?;
            if !inside(child, 1) || !visited.insert(child) {
                return Err(());
            }
            nodes.push(child..child + 1);
            let block = slice
                .read(child * geo.block_size, geo.block_size as usize)
                .map_err(|_| ())?;
            extent_node(slice, geo, &block, Some(depth - 1), visited, extents, nodes)?;
        }
    }
    Ok(())
}

/// The first block of `refs` (sorted by start) outside `covered` (sorted,
/// merged), with the inode referring to it, and how many blocks of `refs`
/// lie outside `covered` in all; `None` when every block is covered.
pub(super) fn uncovered(
    refs: &[(Range<u64>, u32)],
    covered: &[Range<u64>],
) -> Option<(u64, u32, u64)> {
    let mut first = None;
    let mut count = 0;
    for (r, ino) in refs {
        let mut cursor = r.start;
        let mut i = covered.partition_point(|c| c.end <= cursor);
        while cursor < r.end {
            let next = covered.get(i).map_or(r.end, |c| c.start.min(r.end));
            if next > cursor {
                first.get_or_insert((cursor, *ino));
                count += next - cursor;
            }
            match covered.get(i) {
                Some(c) if c.start < r.end => cursor = c.end.max(cursor),
                _ => break,
            }
            i += 1;
        }
    }
    first.map(|(block, ino)| (block, ino, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: u64 = 1024;

    /// A 1 KiB-block geometry of `blocks` blocks, enough for the map walkers.
    fn geo(blocks: u64) -> Geometry {
        Geometry {
            block_size: BS,
            blocks,
            first_data_block: 1,
            blocks_per_group: 8192,
            groups: 1,
            desc_size: 32,
            gdt_blocks: 1,
            first_meta_bg: None,
            reserved_gdt_blocks: 0,
            itable_blocks: 1,
            inodes_per_group: 8,
            inode_size: 128,
            sparse_super: true,
            backup_bgs: None,
            csum: Csum::None,
        }
    }

    fn put32(buf: &mut [u8], off: usize, v: u32) {
        buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn put16(buf: &mut [u8], off: usize, v: u16) {
        buf[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    /// An extent node header.
    fn header(buf: &mut [u8], entries: u16, max: u16, depth: u16) {
        put16(buf, 0, EXTENT_MAGIC);
        put16(buf, 2, entries);
        put16(buf, 4, max);
        put16(buf, 6, depth);
    }

    fn leaf(buf: &mut [u8], i: usize, logical: u32, len: u16, physical: u64) {
        let e = 12 + 12 * i;
        put32(buf, e, logical);
        put16(buf, e + 4, len);
        put16(buf, e + 6, (physical >> 32) as u16);
        put32(buf, e + 8, physical as u32);
    }

    fn index(buf: &mut [u8], i: usize, logical: u32, child: u64) {
        let e = 12 + 12 * i;
        put32(buf, e, logical);
        put32(buf, e + 4, child as u32);
        put16(buf, e + 8, (child >> 32) as u16);
    }

    /// A raw inode of `mode` with `flags` and size, i_block to be filled.
    fn inode(mode: u16, flags: u32, size: u32) -> Vec<u8> {
        let mut raw = vec![0u8; 128];
        put16(&mut raw, 0, mode);
        put32(&mut raw, 4, size);
        put16(&mut raw, 0x1A, 1);
        put32(&mut raw, 0x20, flags);
        raw
    }

    fn blocks_of(disk: &Vec<u8>, geo: &Geometry, raw: &[u8]) -> Result<Vec<Range<u64>>, Reason> {
        let slice = Slice::new(disk, 0, disk.len() as u64);
        let mut out = Vec::new();
        inode_blocks(&slice, geo, 12, raw, &mut HashSet::new(), &mut out)?;
        crate::fs::normalize(&mut out, geo.blocks);
        Ok(out)
    }

    #[test]
    fn block_map_follows_direct_and_indirect_blocks() {
        let geo = geo(4096);
        let mut disk = vec![0u8; (4096 * BS) as usize];
        let mut raw = inode(S_IFREG | 0o644, 0, 1 << 20);
        // Direct blocks 100..=101 and a hole, a single indirect at 200
        // listing 300 and 301, a double indirect at 400 -> 500 -> 600.
        put32(&mut raw, 0x28, 100);
        put32(&mut raw, 0x28 + 4, 101);
        put32(&mut raw, 0x28 + 4 * 12, 200);
        put32(&mut raw, 0x28 + 4 * 13, 400);
        put32(&mut disk, 200 * BS as usize, 300);
        put32(&mut disk, 200 * BS as usize + 4, 301);
        put32(&mut disk, 400 * BS as usize + 8, 500);
        put32(&mut disk, 500 * BS as usize + 1020, 600);
        // The EA block counts too.
        put32(&mut raw, 0x68, 700);
        assert_eq!(
            blocks_of(&disk, &geo, &raw).unwrap(),
            vec![
                100..102,
                200..201,
                300..302,
                400..401,
                500..501,
                600..601,
                700..701
            ]
        );

        // A pointer past the end, or an indirect block reached twice, is an error.
        put32(&mut disk, 500 * BS as usize + 1016, 5000);
        let err = blocks_of(&disk, &geo, &raw).unwrap_err();
        assert!(err.contains("block 5000 outside"), "{err}");
        put32(&mut disk, 500 * BS as usize + 1016, 0);
        put32(&mut disk, 400 * BS as usize + 12, 500);
        let err = blocks_of(&disk, &geo, &raw).unwrap_err();
        assert!(err.contains("block 500 twice"), "{err}");
    }

    #[test]
    fn extent_tree_with_index_nodes() {
        let geo = geo(4096);
        let mut disk = vec![0u8; (4096 * BS) as usize];
        let mut raw = inode(S_IFREG | 0o644, EXTENTS_FL, 1 << 24);
        // Depth 2: root -> index block 50 -> leaves 60 and 61.
        header(&mut raw[0x28..], 1, 4, 2);
        index(&mut raw[0x28..], 0, 0, 50);
        let at = |b: usize| b * BS as usize;
        header(&mut disk[at(50)..], 2, 84, 1);
        index(&mut disk[at(50)..], 0, 0, 60);
        index(&mut disk[at(50)..], 1, 1000, 61);
        header(&mut disk[at(60)..], 2, 84, 0);
        leaf(&mut disk[at(60)..], 0, 0, 8, 1000);
        // Uninitialised: 32768 + 4 blocks, allocated all the same.
        leaf(&mut disk[at(60)..], 1, 8, 32768 + 4, 2000);
        header(&mut disk[at(61)..], 1, 84, 0);
        leaf(&mut disk[at(61)..], 0, 1000, 16, 3000);
        assert_eq!(
            blocks_of(&disk, &geo, &raw).unwrap(),
            vec![50..51, 60..62, 1000..1008, 2000..2004, 3000..3016]
        );

        // A leaf at the wrong depth, a bad magic or an extent past the end: not valid.
        for (block, off, value) in [(61, 6, 1u16), (60, 0, 0xF30B), (61, 12 + 4, 4000)] {
            let mut bad = disk.clone();
            put16(&mut bad[at(block)..], off, value);
            let err = blocks_of(&bad, &geo, &raw).unwrap_err();
            assert_eq!(err, "extent tree of inode 12 is not valid");
        }
        // An index pointing at a node already seen (a loop).
        let mut looped = disk.clone();
        index(&mut looped[at(50)..], 1, 1000, 50);
        assert!(blocks_of(&looped, &geo, &raw).is_err());
    }

    #[test]
    fn inodes_without_data_blocks() {
        let geo = geo(4096);
        let disk = vec![0u8; (4096 * BS) as usize];
        // Garbage in i_block that would be out of range as block numbers.
        let fill = |raw: &mut Vec<u8>| raw[0x28..0x28 + 60].fill(0xEE);
        for (mode, flags, size) in [
            (S_IFLNK | 0o777, 0, 40),              // fast symlink
            (S_IFREG | 0o644, INLINE_DATA_FL, 50), // inline data
            (S_IFDIR | 0o755, INLINE_DATA_FL, 60),
            (0x2000 | 0o600, 0, 0), // character device
            (0x1000 | 0o600, 0, 0), // FIFO
        ] {
            let mut raw = inode(mode, flags, size);
            fill(&mut raw);
            assert_eq!(
                blocks_of(&disk, &geo, &raw).unwrap(),
                vec![],
                "mode {mode:o}"
            );
            // But an EA block is theirs all the same.
            put32(&mut raw, 0x68, 77);
            assert_eq!(blocks_of(&disk, &geo, &raw).unwrap(), vec![77..78]);
        }
        // A slow symlink (60 bytes or more) has a data block.
        let mut raw = inode(S_IFLNK | 0o777, 0, 200);
        put32(&mut raw, 0x28, 900);
        assert_eq!(blocks_of(&disk, &geo, &raw).unwrap(), vec![900..901]);
    }

    #[test]
    fn uncovered_names_the_first_missing_block() {
        let refs = vec![(10..20, 12), (30..31, 13), (40..50, 14)];
        assert_eq!(uncovered(&refs, &[0..100]), None);
        assert_eq!(uncovered(&refs, &[10..20, 30..31, 40..50]), None);
        assert_eq!(
            uncovered(&refs, &[0..15, 16..35, 45..60]),
            Some((15, 12, 6))
        );
        assert_eq!(uncovered(&refs, &[]), Some((10, 12, 21)));
        assert_eq!(uncovered(&refs, &[0..20, 41..49]), Some((30, 13, 3)));
    }
}
