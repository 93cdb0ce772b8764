//! ext2, ext3 and ext4: which blocks the block bitmaps mark in use.
//!
//! Reads the superblock, the group descriptors and the block bitmap of every
//! initialised group straight from the device. Kept: every block a bitmap
//! marks in use, all metadata (superblock copies, descriptor tables, reserved
//! descriptor blocks, bitmaps, inode tables) wherever it lives (`flex_bg`),
//! the boot block and anything past the end of the filesystem.
//!
//! Trusted only when it can be: a journal to replay, a filesystem not marked
//! clean or marked with errors, unknown or unsupported features
//! (`bigalloc`, snapshots), failed superblock, descriptor or bitmap
//! checksums, a descriptor free count the bitmap disagrees with, or a
//! metadata block the bitmap marks free all make the partition read whole.
//! `meta_bg` descriptor layouts are followed as the kernel's `descriptor_loc`.

use std::collections::HashSet;
use std::ops::Range;

mod inodes;

use super::crc::{crc16_update, crc32c_update};
use super::field::{be32, le16, le32, le64};
use super::{ALLOCATED_ONLY, Allocation, Probe, Reason, Slice};

const MAGIC: u16 = 0xEF53;

const COMPAT_HAS_JOURNAL: u32 = 0x4;
const COMPAT_SPARSE_SUPER2: u32 = 0x200;

const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
/// filetype, meta_bg (layout followed), extents, 64bit, mmp, flex_bg, ea_inode, dirdata, csum_seed,
/// largedir, inline_data, encrypt, casefold: none changes where blocks are
/// accounted, so the bitmaps stay the truth.
const INCOMPAT_UNDERSTOOD: u32 = 0x2
    | 0x10
    | 0x40
    | 0x80
    | 0x100
    | 0x200
    | 0x400
    | 0x1000
    | 0x2000
    | 0x4000
    | 0x8000
    | 0x10000
    | 0x20000;

const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_BIGALLOC: u32 = 0x200;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
/// Everything but has_snapshot (0x80), bigalloc (0x200) and replica (0x800).
const RO_COMPAT_UNDERSTOOD: u32 = 0x1
    | 0x2
    | 0x4
    | 0x8
    | 0x10
    | 0x20
    | 0x40
    | 0x100
    | 0x400
    | 0x1000
    | 0x2000
    | 0x4000
    | 0x8000
    | 0x10000;

const STATE_VALID: u16 = 0x1;
const STATE_ERROR: u16 = 0x2;

const BG_INODE_UNINIT: u16 = 0x1;
const BG_BLOCK_UNINIT: u16 = 0x2;

/// Largest descriptor table read (64 MiB: one million groups of 64 bytes).
const MAX_GDT_BYTES: u64 = 64 << 20;
/// Largest single bitmap read when coalescing adjacent bitmaps.
const MAX_BATCH_BYTES: u64 = 1 << 20;

/// Recognises ext2/3/4 by its superblock magic and plans it.
pub(crate) fn probe(slice: &Slice<'_>) -> Option<Probe> {
    let sb = slice.read(1024, 1024).ok()?;
    if le16(&sb, 0x38).ok()? != MAGIC {
        return None;
    }
    Some(Probe {
        content: name(&sb).into(),
        result: plan(slice, &sb),
    })
}

/// The name blkid would give, from the feature flags.
fn name(sb: &[u8]) -> &'static str {
    let compat = le32(sb, 0x5C).unwrap_or(0);
    let incompat = le32(sb, 0x60).unwrap_or(0);
    let ro_compat = le32(sb, 0x64).unwrap_or(0);
    if incompat & INCOMPAT_JOURNAL_DEV != 0 {
        "jbd"
    } else if incompat & !(INCOMPAT_FILETYPE | INCOMPAT_RECOVER | INCOMPAT_META_BG) != 0
        || ro_compat & !(RO_COMPAT_SPARSE_SUPER | 0x2 | 0x4) != 0
    {
        "ext4"
    } else if compat & COMPAT_HAS_JOURNAL != 0 {
        "ext3"
    } else {
        "ext2"
    }
}

/// Geometry and features taken from a checked superblock.
struct Geometry {
    block_size: u64,
    blocks: u64,
    first_data_block: u64,
    blocks_per_group: u64,
    groups: u64,
    desc_size: usize,
    gdt_blocks: u64,
    /// With `meta_bg`: descriptor blocks before this index keep the classic
    /// layout, later ones live in their own meta group.
    first_meta_bg: Option<u64>,
    reserved_gdt_blocks: u64,
    itable_blocks: u64,
    inodes_per_group: u64,
    inode_size: u64,
    sparse_super: bool,
    backup_bgs: Option<[u64; 2]>,
    /// Checksum flavour of descriptors, which also decides whether `BLOCK_UNINIT` counts.
    csum: Csum,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Csum {
    None,
    /// `uninit_bg` / `gdt_csum`: CRC16 over UUID, group number and descriptor.
    Crc16,
    /// `metadata_csum`: CRC32C with this seed, also over block bitmaps.
    Crc32c(u32),
}

/// One group descriptor, the fields planning needs.
struct Desc {
    block_bitmap: u64,
    inode_bitmap: u64,
    inode_table: u64,
    free_blocks: u64,
    flags: u16,
    bitmap_csum: u32,
    /// Checksum of the inode bitmap (`metadata_csum`).
    inode_bitmap_csum: u32,
    /// Inodes at the end of the group's table never used (`bg_itable_unused`).
    itable_unused: u64,
}

fn plan(slice: &Slice<'_>, sb: &[u8]) -> Result<Allocation, Reason> {
    let geo = geometry(slice, sb)?;
    let uuid = sb.get(0x68..0x78).ok_or("superblock too short")?;
    let descs = descriptors(slice, &geo, uuid)?;

    // All metadata, in blocks, wherever flex_bg put it.
    let mut meta: Vec<Range<u64>> = Vec::new();
    for g in 0..geo.groups {
        let start = group_start(&geo, g);
        let sb_copy = u64::from(has_super(&geo, g));
        let per_block = geo.block_size / geo.desc_size as u64;
        match geo.first_meta_bg {
            // meta_bg: one descriptor block per meta group, in its first,
            // second and last group, after the superblock copy if any.
            Some(first_meta) if g >= first_meta * per_block => {
                let first = g - g % per_block;
                let gdt = u64::from(g == first || g == first + 1 || g == first + per_block - 1);
                meta.push(start..start + sb_copy + gdt);
            }
            // The classic layout (or meta_bg's first groups): the descriptor
            // table and its reserved growth area follow each superblock copy.
            Some(first_meta) if sb_copy == 1 => {
                meta.push(start..start + 1 + first_meta + geo.reserved_gdt_blocks)
            }
            None if sb_copy == 1 => {
                meta.push(start..start + 1 + geo.gdt_blocks + geo.reserved_gdt_blocks)
            }
            _ => {}
        }
    }
    for d in &descs {
        meta.push(d.block_bitmap..d.block_bitmap + 1);
        meta.push(d.inode_bitmap..d.inode_bitmap + 1);
        meta.push(d.inode_table..d.inode_table + geo.itable_blocks);
    }
    if le32(sb, 0x60)? & 0x100 != 0 {
        // MMP block: kept even if a bitmap forgot it.
        let mmp = le64(sb, 0x168)?;
        if mmp < geo.blocks {
            meta.push(mmp..mmp + 1);
        }
    }
    for r in &meta {
        if r.end > geo.blocks || r.start < geo.first_data_block {
            return Err("metadata block lies outside the filesystem".into());
        }
    }
    super::normalize(&mut meta, geo.blocks);

    let mut used: Vec<Range<u64>> = meta.clone();
    let uninit_counts = geo.csum != Csum::None;
    let wanted: Vec<(u64, u64)> = descs
        .iter()
        .enumerate()
        .filter(|(_, d)| !(uninit_counts && d.flags & BG_BLOCK_UNINIT != 0))
        .map(|(g, d)| (d.block_bitmap, g as u64))
        .collect();
    let bs = geo.block_size;
    inodes::for_each_block(slice, bs, wanted, |g, bitmap| {
        group_blocks(&geo, g, &descs[g as usize], bitmap, &meta, &mut used)
    })?;
    super::normalize(&mut used, geo.blocks);

    // Valid checksums and counts do not make a bitmap right: every block an
    // in-use inode refers to must be marked in use before anything is skipped.
    let refs = if super::cross_check_enabled() {
        let refs = inodes::referenced(slice, &geo, &descs)?;
        if let Some((block, ino, count)) = inodes::uncovered(&refs.blocks, &used) {
            return Err(format!(
                "block bitmaps mark {count} blocks that inodes use free (block {block} of inode {ino}, group {}); run e2fsck",
                (block - geo.first_data_block) / geo.blocks_per_group
            ));
        }
        tracing::debug!(
            inodes = refs.inodes,
            extents = refs.blocks.len(),
            "ext bitmaps agree with the inodes"
        );
        Some(refs)
    } else {
        None
    };
    let used_blocks: u64 = used.iter().map(|r| r.end - r.start).sum();
    // What is dropped besides free blocks (unused inode table tails, an
    // empty journal's body): no other inode may have blocks there.
    let mut skipped: Vec<Range<u64>> = Vec::new();
    if uninit_counts {
        // With descriptor checksums the kernel and e2fsck never look past
        // the used part of an inode table (`bg_itable_unused`, or all of it
        // for INODE_UNINIT): that tail, often stale or never written, reads
        // as zeros, which is what lazy inode table initialisation writes.
        let mut unused: Vec<Range<u64>> = descs
            .iter()
            .map(|d| {
                let in_use = if d.flags & BG_INODE_UNINIT != 0 {
                    0
                } else {
                    geo.inodes_per_group - d.itable_unused
                };
                let blocks = (in_use * geo.inode_size).div_ceil(bs);
                d.inode_table + blocks..d.inode_table + geo.itable_blocks
            })
            .collect();
        super::normalize(&mut unused, geo.blocks);
        used = super::subtract(&used, &unused);
        skipped.extend(unused);
    }
    // An empty journal (clean filesystem) is never read back: skip all but
    // its superblock. Any doubt keeps it.
    match journal_body(slice, sb, &geo, descs.first()) {
        Ok(Some(mut body)) => {
            super::normalize(&mut body, geo.blocks);
            used = super::subtract(&used, &body);
            skipped.extend(body);
        }
        Ok(None) => {}
        Err(reason) => tracing::debug!(%reason, "Keeping the ext journal"),
    }
    if let Some(refs) = refs {
        let journal = le32(sb, 0xE0)?;
        super::normalize(&mut skipped, geo.blocks);
        let others: Vec<(Range<u64>, u32)> = refs
            .blocks
            .into_iter()
            .filter(|(_, ino)| *ino != journal)
            .collect();
        let kept = super::subtract(&[0..geo.blocks], &skipped);
        if let Some((block, ino, _)) = inodes::uncovered(&others, &kept) {
            return Err(format!(
                "inode {ino} uses block {block} inside an inode table or the journal; run e2fsck"
            ));
        }
    }
    let mut ranges: Vec<Range<u64>> = used.into_iter().map(|r| r.start * bs..r.end * bs).collect();
    // The boot block and the primary superblock, and whatever follows the filesystem.
    ranges.push(0..2048.max(bs));
    ranges.push(geo.blocks * bs..slice.size());
    Ok(Allocation {
        ranges,
        bytes_used: Some(used_blocks * bs),
        handling: ALLOCATED_ONLY,
    })
}

/// Checks the superblock and derives the geometry, or says why it cannot be trusted.
fn geometry(slice: &Slice<'_>, sb: &[u8]) -> Result<Geometry, Reason> {
    let compat = le32(sb, 0x5C)?;
    let incompat = le32(sb, 0x60)?;
    let ro_compat = le32(sb, 0x64)?;
    let state = le16(sb, 0x3A)?;
    if incompat & INCOMPAT_RECOVER != 0 {
        return Err("journal needs recovery (filesystem not cleanly unmounted)".into());
    }
    if incompat & INCOMPAT_JOURNAL_DEV != 0 {
        return Err("external journal device".into());
    }
    if state & STATE_ERROR != 0 {
        return Err("filesystem has errors recorded; run e2fsck".into());
    }
    if state & STATE_VALID == 0 {
        return Err("filesystem not cleanly unmounted".into());
    }
    if ro_compat & RO_COMPAT_BIGALLOC != 0 {
        return Err("bigalloc not supported".into());
    }
    if incompat & !INCOMPAT_UNDERSTOOD != 0 || ro_compat & !RO_COMPAT_UNDERSTOOD != 0 {
        return Err(format!(
            "unsupported features (incompat {:#x}, ro_compat {:#x})",
            incompat & !INCOMPAT_UNDERSTOOD,
            ro_compat & !RO_COMPAT_UNDERSTOOD
        ));
    }
    let csum = if ro_compat & RO_COMPAT_METADATA_CSUM != 0 {
        if sb.get(0x175) != Some(&1) {
            return Err("unknown metadata checksum type".into());
        }
        let stored = le32(sb, 0x3FC)?;
        if crc32c_update(!0, sb.get(..0x3FC).ok_or("superblock too short")?) != stored {
            return Err("superblock checksum mismatch".into());
        }
        let seed = if incompat & INCOMPAT_CSUM_SEED != 0 {
            le32(sb, 0x270)?
        } else {
            crc32c_update(!0, sb.get(0x68..0x78).ok_or("superblock too short")?)
        };
        Csum::Crc32c(seed)
    } else if ro_compat & RO_COMPAT_GDT_CSUM != 0 {
        Csum::Crc16
    } else {
        Csum::None
    };

    let log_block = le32(sb, 0x18)?;
    if log_block > 6 {
        return Err("invalid block size".into());
    }
    let block_size = 1024u64 << log_block;
    let mut blocks = u64::from(le32(sb, 0x4)?);
    let desc_size = if incompat & INCOMPAT_64BIT != 0 {
        blocks |= u64::from(le32(sb, 0x150)?) << 32;
        let ds = usize::from(le16(sb, 0xFE)?);
        if !(64..=1024).contains(&ds) || !ds.is_power_of_two() {
            return Err("invalid group descriptor size".into());
        }
        ds
    } else {
        32
    };
    let first_data_block = u64::from(le32(sb, 0x14)?);
    if first_data_block != u64::from(block_size == 1024) {
        return Err("unexpected first data block".into());
    }
    let blocks_per_group = u64::from(le32(sb, 0x20)?);
    if blocks_per_group < 8 || blocks_per_group > 8 * block_size || blocks_per_group % 8 != 0 {
        return Err("invalid blocks per group".into());
    }
    if u64::from(le32(sb, 0x24)?) != blocks_per_group {
        return Err("clusters per group differs from blocks per group".into());
    }
    if blocks <= first_data_block {
        return Err("filesystem has no data blocks".into());
    }
    let fs_bytes = blocks
        .checked_mul(block_size)
        .ok_or("block count overflows")?;
    if fs_bytes > slice.size() {
        return Err("filesystem is larger than its partition".into());
    }
    let groups = (blocks - first_data_block).div_ceil(blocks_per_group);
    let gdt_bytes = groups * desc_size as u64;
    if gdt_bytes > MAX_GDT_BYTES {
        return Err("group descriptor table implausibly large".into());
    }
    let inodes_per_group = u64::from(le32(sb, 0x28)?);
    let inode_size = if le32(sb, 0x4C)? == 0 {
        128
    } else {
        u64::from(le16(sb, 0x58)?)
    };
    if inode_size < 128 || inode_size > block_size || !inode_size.is_power_of_two() {
        return Err("invalid inode size".into());
    }
    if inodes_per_group == 0 || inodes_per_group > 8 * block_size {
        return Err("invalid inodes per group".into());
    }
    let inodes = u64::from(le32(sb, 0x0)?);
    if inodes != inodes_per_group * groups {
        return Err("inode count disagrees with the group count".into());
    }
    let first_meta_bg = if incompat & INCOMPAT_META_BG != 0 {
        let first = u64::from(le32(sb, 0x104)?);
        if first > gdt_bytes.div_ceil(block_size) {
            return Err("first meta block group lies past the descriptor table".into());
        }
        Some(first)
    } else {
        None
    };
    let backup_bgs = (compat & COMPAT_SPARSE_SUPER2 != 0)
        .then(|| Ok::<_, Reason>([u64::from(le32(sb, 0x24C)?), u64::from(le32(sb, 0x250)?)]))
        .transpose()?;
    Ok(Geometry {
        block_size,
        blocks,
        first_data_block,
        blocks_per_group,
        groups,
        desc_size,
        gdt_blocks: gdt_bytes.div_ceil(block_size),
        first_meta_bg,
        reserved_gdt_blocks: u64::from(le16(sb, 0xCE)?),
        itable_blocks: (inodes_per_group * inode_size).div_ceil(block_size),
        inodes_per_group,
        inode_size,
        sparse_super: ro_compat & RO_COMPAT_SPARSE_SUPER != 0,
        backup_bgs,
        csum,
    })
}

/// Reads and verifies every group descriptor.
fn descriptors(slice: &Slice<'_>, geo: &Geometry, uuid: &[u8]) -> Result<Vec<Desc>, Reason> {
    let ds = geo.desc_size;
    let table = match geo.first_meta_bg {
        None => slice.read(
            (geo.first_data_block + 1) * geo.block_size,
            geo.groups as usize * ds,
        )?,
        Some(first_meta) => {
            // Descriptor block `nr` sits where the kernel's descriptor_loc() says.
            let per_block = geo.block_size / ds as u64;
            let mut table = Vec::with_capacity((geo.gdt_blocks * geo.block_size) as usize);
            for nr in 0..geo.gdt_blocks {
                let block = if nr < first_meta {
                    geo.first_data_block + nr + 1
                } else {
                    let g = per_block * nr;
                    group_start(geo, g) + u64::from(has_super(geo, g))
                };
                table.extend(slice.read(block * geo.block_size, geo.block_size as usize)?);
            }
            table.truncate(geo.groups as usize * ds);
            table
        }
    };
    let mut descs = Vec::with_capacity(geo.groups as usize);
    for (g, raw) in table.chunks_exact(ds).enumerate() {
        let hi = |off: usize| -> Result<u64, Reason> {
            if ds >= 64 {
                le32(raw, off).map(u64::from)
            } else {
                Ok(0)
            }
        };
        let hi16 = |off: usize| -> Result<u64, Reason> {
            if ds >= 64 {
                le16(raw, off).map(u64::from)
            } else {
                Ok(0)
            }
        };
        let stored = le16(raw, 0x1E)?;
        let group = (g as u32).to_le_bytes();
        let computed = match geo.csum {
            Csum::None => stored,
            Csum::Crc32c(seed) => {
                let mut crc = crc32c_update(seed, &group);
                crc = crc32c_update(crc, &raw[..0x1E]);
                crc = crc32c_update(crc, &[0, 0]);
                crc = crc32c_update(crc, &raw[0x20..]);
                (crc & 0xFFFF) as u16
            }
            Csum::Crc16 => {
                let mut crc = crc16_update(!0, uuid);
                crc = crc16_update(crc, &group);
                crc = crc16_update(crc, &raw[..0x1E]);
                crc16_update(crc, &raw[0x20..])
            }
        };
        if computed != stored {
            return Err(format!("group descriptor {g} checksum mismatch"));
        }
        let bitmap_csum_hi = if ds >= 0x3A { le16(raw, 0x38)? } else { 0 };
        let inode_bitmap_csum_hi = if ds >= 0x3C { le16(raw, 0x3A)? } else { 0 };
        let d = Desc {
            block_bitmap: u64::from(le32(raw, 0x0)?) | hi(0x20)? << 32,
            inode_bitmap: u64::from(le32(raw, 0x4)?) | hi(0x24)? << 32,
            inode_table: u64::from(le32(raw, 0x8)?) | hi(0x28)? << 32,
            free_blocks: u64::from(le16(raw, 0xC)?) | hi16(0x2C)? << 16,
            flags: le16(raw, 0x12)?,
            bitmap_csum: u32::from(le16(raw, 0x18)?) | u32::from(bitmap_csum_hi) << 16,
            inode_bitmap_csum: u32::from(le16(raw, 0x1A)?) | u32::from(inode_bitmap_csum_hi) << 16,
            itable_unused: u64::from(le16(raw, 0x1C)?) | hi16(0x32)? << 16,
        };
        let inside = |b: u64, n: u64| {
            b >= geo.first_data_block && b.checked_add(n).is_some_and(|e| e <= geo.blocks)
        };
        if !inside(d.block_bitmap, 1)
            || !inside(d.inode_bitmap, 1)
            || !inside(d.inode_table, geo.itable_blocks)
        {
            return Err(format!(
                "group descriptor {g} points outside the filesystem"
            ));
        }
        if d.itable_unused > geo.inodes_per_group {
            return Err(format!(
                "group descriptor {g} has an impossible unused inode count"
            ));
        }
        if d.free_blocks > geo.blocks_per_group {
            return Err(format!("group descriptor {g} has an impossible free count"));
        }
        descs.push(d);
    }
    Ok(descs)
}

/// First block of group `g`.
fn group_start(geo: &Geometry, g: u64) -> u64 {
    geo.first_data_block + g * geo.blocks_per_group
}

/// Whether group `g` holds a superblock copy and descriptor table.
fn has_super(geo: &Geometry, g: u64) -> bool {
    if g == 0 {
        return true;
    }
    if let Some(bgs) = geo.backup_bgs {
        return bgs.contains(&g);
    }
    if g == 1 || !geo.sparse_super {
        return true;
    }
    if g % 2 == 0 {
        return false;
    }
    [3u64, 5, 7].iter().any(|&base| {
        let mut n = base;
        while n < g {
            n *= base;
        }
        n == g
    })
}

/// Checks one group's bitmap and adds the blocks it marks in use.
fn group_blocks(
    geo: &Geometry,
    g: u64,
    desc: &Desc,
    bitmap: &[u8],
    meta: &[Range<u64>],
    used: &mut Vec<Range<u64>>,
) -> Result<(), Reason> {
    let bits = geo.blocks_per_group as usize;
    let start = group_start(geo, g);
    let in_group = (geo.blocks - start).min(geo.blocks_per_group) as usize;
    let map = bitmap
        .get(..bits / 8)
        .ok_or("bitmap shorter than a group")?;
    if let Csum::Crc32c(seed) = geo.csum {
        let crc = crc32c_update(seed, map);
        let mask = if geo.desc_size >= 0x3A {
            u32::MAX
        } else {
            0xFFFF
        };
        if crc & mask != desc.bitmap_csum {
            return Err(format!("block bitmap of group {g} checksum mismatch"));
        }
    }
    let set = |i: usize| map[i / 8] & (1 << (i % 8)) != 0;

    // Every metadata block inside this group must be marked in use.
    let end = start + in_group as u64;
    let first = meta.partition_point(|r| r.end <= start);
    for r in meta[first..].iter().take_while(|r| r.start < end) {
        for b in r.start.max(start)..r.end.min(end) {
            if !set((b - start) as usize) {
                return Err(format!(
                    "block bitmap of group {g} marks metadata block {b} free"
                ));
            }
        }
    }

    let mut free = 0u64;
    let mut i = 0usize;
    while i < in_group {
        // Whole bytes at once when aligned: most bytes are all ones or all zeros.
        if i % 8 == 0 && i + 8 <= in_group {
            match map[i / 8] {
                0x00 => {
                    free += 8;
                    i += 8;
                    continue;
                }
                0xFF => {
                    let run = i;
                    while i + 8 <= in_group && map[i / 8] == 0xFF {
                        i += 8;
                    }
                    while i < in_group && set(i) {
                        i += 1;
                    }
                    used.push(start + run as u64..start + i as u64);
                    continue;
                }
                _ => {}
            }
        }
        if set(i) {
            let run = i;
            while i < in_group && set(i) {
                i += 1;
            }
            used.push(start + run as u64..start + i as u64);
        } else {
            free += 1;
            i += 1;
        }
    }
    if free != desc.free_blocks {
        return Err(format!(
            "block bitmap of group {g} has {free} free blocks, its descriptor says {}",
            desc.free_blocks
        ));
    }
    Ok(())
}

const JBD2_MAGIC: u32 = 0xC03B_3998;
const EXTENTS_FL: u32 = 0x0008_0000;

/// Blocks of an internal journal past its superblock, when the journal is
/// empty (`s_start == 0`): a clean unmount left nothing in it to replay,
/// so its old transactions are dead data.
fn journal_body(
    slice: &Slice<'_>,
    sb: &[u8],
    geo: &Geometry,
    group0: Option<&Desc>,
) -> Result<Option<Vec<Range<u64>>>, Reason> {
    let inum = u64::from(le32(sb, 0xE0)?);
    if le32(sb, 0x5C)? & COMPAT_HAS_JOURNAL == 0 || inum == 0 || le32(sb, 0xE4)? != 0 {
        return Ok(None);
    }
    let Some(group0) = group0 else {
        return Ok(None);
    };
    if inum > geo.inodes_per_group {
        return Ok(None);
    }
    let bs = geo.block_size;
    let inode = slice.read(group0.inode_table * bs + (inum - 1) * geo.inode_size, 128)?;
    if le32(&inode, 0x20)? & EXTENTS_FL == 0 {
        return Ok(None);
    }
    let mut extents = Vec::new();
    let root = inode.get(0x28..0x28 + 60).ok_or("inode too short")?;
    inodes::extent_tree(
        slice,
        geo,
        root,
        &mut HashSet::new(),
        &mut extents,
        &mut Vec::new(),
    )
    .map_err(|()| "journal extent tree not valid")?;
    // Logical block 0 is the journal superblock: it must say "empty".
    let first = extents
        .iter()
        .find(|(logical, _, _)| *logical == 0)
        .ok_or("journal has no first block")?;
    let jsb = slice.read(first.1 * bs, 1024)?;
    if be32(&jsb, 0)? != JBD2_MAGIC || !matches!(be32(&jsb, 4)?, 3 | 4) {
        return Err("journal superblock not recognised".into());
    }
    if be32(&jsb, 28)? != 0 {
        return Err("journal not empty".into());
    }
    let mut body = Vec::new();
    for (logical, physical, len) in extents {
        let skip = u64::from(logical == 0);
        if len > skip {
            body.push(physical + skip..physical + len);
        }
    }
    Ok(Some(body))
}
