//! Partition tables: GPT (primary or backup header, any number of entries)
//! and MBR (primary, extended and logical partitions).
//!
//! Only tables whose checksums and bounds hold are used; a table that is
//! present but broken is an error, which makes the whole disk read. So is a
//! GPT without a protective MBR: the kernel and blkid ignore it, but it
//! says the disk once had another layout.

use std::collections::HashSet;
use std::ops::Range;

use super::field::{le32, le64};
use super::{ReadAt, Reason, read_full};
use crate::fs::crc::crc32;

/// What a partition is for, as far as its type code says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Ordinary data: planned by content.
    Data,
    /// EFI system partition.
    Esp,
    /// GPT BIOS boot partition (GRUB core image).
    BiosBoot,
    /// PowerPC PReP boot partition.
    Prep,
}

impl Role {
    /// Why a partition of this role is always read whole, if it is.
    pub(crate) fn keep_whole(self) -> Option<&'static str> {
        match self {
            Role::Data => None,
            Role::Esp => Some("EFI system partition (boot area)"),
            Role::BiosBoot => Some("BIOS boot partition (boot area)"),
            Role::Prep => Some("PReP boot partition (boot area)"),
        }
    }
}

/// One partition, in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Part {
    /// Number as tools show it (GPT entry index + 1; MBR 1-4, logical from 5).
    pub number: u32,
    /// First byte.
    pub start: u64,
    /// Length in bytes (non-zero).
    pub size: u64,
    /// What the type code says.
    pub role: Role,
}

/// A disk's partitions and the areas its tables occupy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Partitions sorted by start, non-overlapping, inside the disk.
    pub partitions: Vec<Part>,
    /// Byte ranges of the tables themselves (the MBR, every EBR, GPT headers
    /// and entry arrays): always read, wherever they lie.
    pub tables: Vec<Range<u64>>,
}

const ESP: [u8; 16] = [
    0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B,
];
const BIOS_BOOT: [u8; 16] = *b"Hah!IdontNeedEFI";
const PREP: [u8; 16] = [
    0x38, 0x2D, 0x1A, 0x9E, 0x12, 0xC6, 0x16, 0x43, 0xAA, 0x26, 0x8B, 0x49, 0x52, 0x1E, 0x5A, 0x8B,
];
/// Largest GPT entry array read (the usual one is 16 KiB).
const MAX_GPT_ENTRIES_BYTES: u64 = 16 << 20;
/// Longest chain of extended boot records followed.
const MAX_LOGICAL: u32 = 1024;

/// Reads the partition table: `Ok(None)` when there is none, `Err` when one is
/// present but cannot be trusted.
///
/// The rules are the kernel's and blkid's: a GPT counts only behind an MBR
/// with a protective (0xEE) entry, alone or in a hybrid MBR. Without one, a
/// GPT header found at either end of the disk is a leftover the kernel
/// ignores, typically the backup GPT after the first MiB was zeroed and an
/// MBR written. Which table the owner means cannot be told from the disk,
/// and planning by the wrong one skips live data, so that is an error too:
/// the whole disk is read.
pub(crate) fn read(disk: &dyn ReadAt, size: u64) -> Result<Option<Layout>, Reason> {
    let mut mbr = [0u8; 512];
    if size < 512 || read_full(disk, 0, &mut mbr).is_err() {
        return Ok(None);
    }
    let has_mbr = mbr[510..512] == [0x55, 0xAA];
    let protective = has_mbr && (0..4).any(|i| mbr[0x1BE + 16 * i + 4] == 0xEE);

    if protective {
        for sector in [512u64, 4096] {
            match gpt(disk, size, sector) {
                Ok(Some(mut layout)) => {
                    layout.tables.push(0..512);
                    return check(layout, size).map(Some);
                }
                Ok(None) => {}
                Err(reason) => {
                    tracing::debug!(sector, %reason, "GPT not usable");
                    return Err(reason);
                }
            }
        }
        return Err("protective MBR but no valid GPT header".into());
    }
    if let Some(at) = gpt_signature(disk, size) {
        return Err(if has_mbr {
            format!(
                "conflicting partition tables: an MBR without a protective (0xEE) entry \
                 and a GPT header at byte {at} (a stale GPT the kernel ignores?)"
            )
        } else {
            format!(
                "conflicting partition tables: a GPT header at byte {at} \
                 but no protective MBR (the kernel ignores such a GPT)"
            )
        });
    }
    if !has_mbr {
        return Ok(None);
    }
    mbr_layout(disk, size, &mbr)
        .and_then(|layout| check(layout, size))
        .map(Some)
}

/// Where a GPT header signature sits, valid or not, if anywhere: LBA 1 or
/// the last LBA, for 512 and 4096 byte sectors.
fn gpt_signature(disk: &dyn ReadAt, size: u64) -> Option<u64> {
    let mut places = Vec::with_capacity(4);
    for sector in [512u64, 4096] {
        let sectors = size / sector;
        if sectors >= 3 {
            places.push(sector);
            places.push((sectors - 1) * sector);
        }
    }
    places.into_iter().find(|&at| {
        let mut magic = [0u8; 8];
        read_full(disk, at, &mut magic).is_ok() && &magic == b"EFI PART"
    })
}

/// Sorts partitions and checks that they lie inside the disk without overlapping.
fn check(mut layout: Layout, size: u64) -> Result<Layout, Reason> {
    layout.partitions.sort_by_key(|p| p.start);
    let mut end = 0;
    for p in &layout.partitions {
        let p_end = p
            .start
            .checked_add(p.size)
            .filter(|&e| e <= size)
            .ok_or_else(|| format!("partition {} extends beyond the disk end", p.number))?;
        if p.start < end {
            return Err(format!("partition {} overlaps another partition", p.number));
        }
        end = p_end;
    }
    Ok(layout)
}

struct GptHeader {
    alternate: u64,
    first_usable: u64,
    last_usable: u64,
    entries_lba: u64,
    entries: u32,
    entry_size: u32,
    entries_crc: u32,
}

/// Parses and verifies the GPT header at `lba`.
fn gpt_header(
    disk: &dyn ReadAt,
    lba: u64,
    sector: u64,
    sectors: u64,
) -> Result<Option<GptHeader>, Reason> {
    let mut buf = vec![0u8; sector as usize];
    read_full(disk, lba * sector, &mut buf)?;
    if &buf[..8] != b"EFI PART" {
        return Ok(None);
    }
    let header_size = le32(&buf, 12)? as usize;
    if header_size < 92 || header_size > buf.len() {
        return Err(format!("GPT header at LBA {lba} has an invalid size"));
    }
    let stored = le32(&buf, 16)?;
    let mut copy = buf[..header_size].to_vec();
    copy[16..20].fill(0);
    if crc32(&copy) != stored {
        return Err(format!("GPT header at LBA {lba} fails its checksum"));
    }
    let header = GptHeader {
        alternate: le64(&buf, 32)?,
        first_usable: le64(&buf, 40)?,
        last_usable: le64(&buf, 48)?,
        entries_lba: le64(&buf, 72)?,
        entries: le32(&buf, 80)?,
        entry_size: le32(&buf, 84)?,
        entries_crc: le32(&buf, 88)?,
    };
    if le64(&buf, 24)? != lba {
        return Err(format!("GPT header at LBA {lba} names another location"));
    }
    if header.first_usable > header.last_usable.saturating_add(1) || header.last_usable >= sectors {
        return Err(format!(
            "GPT header at LBA {lba} has usable LBAs outside the disk"
        ));
    }
    Ok(Some(header))
}

/// Reads the GPT for one sector size; `Ok(None)` when there is no header at all.
fn gpt(disk: &dyn ReadAt, size: u64, sector: u64) -> Result<Option<Layout>, Reason> {
    let sectors = size / sector;
    if sectors < 3 {
        return Ok(None);
    }
    let primary = gpt_header(disk, 1, sector, sectors);
    let (header, lba) = match primary {
        Ok(Some(h)) => (h, 1),
        other => {
            // Primary missing or broken: the backup at the last LBA may still be good.
            match gpt_header(disk, sectors - 1, sector, sectors) {
                Ok(Some(h)) => (h, sectors - 1),
                Ok(None) | Err(_) => return other.map(|_| None),
            }
        }
    };
    let entry_size = u64::from(header.entry_size);
    if entry_size < 128 || entry_size % 8 != 0 {
        return Err("GPT entry size is invalid".into());
    }
    let array_bytes = entry_size * u64::from(header.entries);
    if array_bytes > MAX_GPT_ENTRIES_BYTES {
        return Err("GPT entry array is implausibly large".into());
    }
    let array_start = header
        .entries_lba
        .checked_mul(sector)
        .filter(|&s| s.checked_add(array_bytes).is_some_and(|e| e <= size))
        .ok_or("GPT entry array lies outside the disk")?;
    let mut array = vec![0u8; array_bytes as usize];
    read_full(disk, array_start, &mut array)?;
    if crc32(&array) != header.entries_crc {
        return Err("GPT entry array fails its checksum".into());
    }

    let mut partitions = Vec::new();
    for (index, entry) in array.chunks_exact(entry_size as usize).enumerate() {
        if entry[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let number = u32::try_from(index + 1).map_err(|_| "too many GPT entries".to_string())?;
        let first = le64(entry, 32)?;
        let last = le64(entry, 40)?;
        if first > last || first < header.first_usable || last > header.last_usable {
            return Err(format!(
                "GPT partition {number} lies outside the usable area"
            ));
        }
        let role = match <[u8; 16]>::try_from(&entry[..16]) {
            Ok(ESP) => Role::Esp,
            Ok(BIOS_BOOT) => Role::BiosBoot,
            Ok(PREP) => Role::Prep,
            _ => Role::Data,
        };
        partitions.push(Part {
            number,
            start: first * sector,
            size: (last - first + 1) * sector,
            role,
        });
    }

    // Both copies of the table: headers and entry arrays, wherever they are.
    let array_sectors = array_bytes.div_ceil(sector);
    let mut tables = vec![
        lba * sector..(lba + 1) * sector,
        array_start..array_start + array_bytes,
    ];
    let other = if lba == 1 { header.alternate } else { 1 };
    if other < sectors {
        tables.push(other * sector..(other + 1) * sector);
        if other > lba {
            // The backup array usually sits just below the backup header.
            let start = other.saturating_sub(array_sectors) * sector;
            tables.push(start..other * sector);
        } else {
            tables.push(2 * sector..(2 + array_sectors) * sector);
        }
        // And where the other header itself says, when it parses.
        if let Ok(Some(h)) = gpt_header(disk, other, sector, sectors) {
            let bytes = (u64::from(h.entries) * u64::from(h.entry_size)).min(MAX_GPT_ENTRIES_BYTES);
            if let Some(start) = h.entries_lba.checked_mul(sector) {
                tables.push(start..start.saturating_add(bytes).min(size));
            }
        }
    }
    Ok(Some(Layout { partitions, tables }))
}

fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0F | 0x85)
}

fn role_of(kind: u8) -> Role {
    match kind {
        0xEF => Role::Esp,
        0x41 => Role::Prep,
        _ => Role::Data,
    }
}

/// One MBR/EBR slot: (status, type, first LBA, sectors).
fn slot(sector: &[u8], i: usize) -> Result<(u8, u8, u64, u64), Reason> {
    let base = 0x1BE + 16 * i;
    Ok((
        sector[base],
        sector[base + 4],
        u64::from(le32(sector, base + 8)?),
        u64::from(le32(sector, base + 12)?),
    ))
}

/// Reads an MBR and its chain of extended boot records (512-byte sectors).
fn mbr_layout(disk: &dyn ReadAt, size: u64, mbr: &[u8]) -> Result<Layout, Reason> {
    let mut partitions = Vec::new();
    // The MBR and every EBR: an EBR may lie inside another partition's free
    // space, and the logical partitions after it are lost if it is not read.
    let mut tables = vec![0..512];
    let mut extended = None;
    for i in 0..4 {
        let (status, kind, first, count) = slot(mbr, i)?;
        if kind == 0 || count == 0 {
            continue;
        }
        if status != 0 && status != 0x80 {
            return Err("MBR partition entry has an invalid status byte".into());
        }
        if is_extended(kind) {
            if extended.is_some() {
                return Err("MBR has more than one extended partition".into());
            }
            extended = Some((first, count));
            continue;
        }
        partitions.push(Part {
            number: i as u32 + 1,
            start: first * 512,
            size: count * 512,
            role: role_of(kind),
        });
    }
    if let Some((ext_first, ext_count)) = extended {
        let ext_end = ext_first + ext_count;
        let mut ebr = ext_first;
        let mut seen = HashSet::new();
        let mut number = 5;
        loop {
            if !seen.insert(ebr) || number > MAX_LOGICAL + 4 {
                return Err("extended boot records form a loop".into());
            }
            if ebr < ext_first || ebr >= ext_end {
                return Err("extended boot record outside the extended partition".into());
            }
            let mut sector = [0u8; 512];
            read_full(disk, ebr * 512, &mut sector)?;
            tables.push(ebr * 512..(ebr + 1) * 512);
            if sector[510..512] != [0x55, 0xAA] {
                return Err(format!(
                    "extended boot record at LBA {ebr} has no signature"
                ));
            }
            let (_, kind, rel, count) = slot(&sector, 0)?;
            if kind != 0 && count != 0 {
                let first = ebr + rel;
                if first <= ebr || first + count > ext_end {
                    return Err(format!(
                        "logical partition {number} lies outside the extended partition"
                    ));
                }
                partitions.push(Part {
                    number,
                    start: first * 512,
                    size: count * 512,
                    role: role_of(kind),
                });
                number += 1;
            }
            let (_, next_kind, next_rel, next_count) = slot(&sector, 1)?;
            if next_kind == 0 || next_count == 0 {
                break;
            }
            if !is_extended(next_kind) {
                return Err(format!(
                    "extended boot record at LBA {ebr} links to a non-extended entry"
                ));
            }
            ebr = ext_first + next_rel;
        }
    }
    let _ = size;
    Ok(Layout { partitions, tables })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::tests::run;

    const MIB: u64 = 1 << 20;

    /// One GPT header of `sectors` 512-byte sectors at `lba`, naming
    /// `entries_lba` for an array whose CRC is `array_crc`.
    fn header(
        lba: u64,
        alternate: u64,
        entries_lba: u64,
        sectors: u64,
        array_crc: u32,
    ) -> [u8; 92] {
        let mut hdr = [0u8; 92];
        hdr[..8].copy_from_slice(b"EFI PART");
        hdr[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        hdr[12..16].copy_from_slice(&92u32.to_le_bytes());
        hdr[24..32].copy_from_slice(&lba.to_le_bytes());
        hdr[32..40].copy_from_slice(&alternate.to_le_bytes());
        hdr[40..48].copy_from_slice(&34u64.to_le_bytes());
        hdr[48..56].copy_from_slice(&(sectors - 34).to_le_bytes());
        hdr[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        hdr[80..84].copy_from_slice(&128u32.to_le_bytes());
        hdr[84..88].copy_from_slice(&128u32.to_le_bytes());
        hdr[88..92].copy_from_slice(&array_crc.to_le_bytes());
        let crc = crc32(&hdr);
        hdr[16..20].copy_from_slice(&crc.to_le_bytes());
        hdr
    }

    /// A disk of `mib` MiB with both GPT copies holding one Linux
    /// partition at `first..=last` (LBAs), and no MBR.
    fn gpt_disk(mib: u64, first: u64, last: u64) -> Vec<u8> {
        gpt_disk_with_backup_array(mib, first, last, mib * MIB / 512 - 33)
    }

    /// [`gpt_disk`] with the backup entry array at LBA `backup_array`.
    fn gpt_disk_with_backup_array(mib: u64, first: u64, last: u64, backup_array: u64) -> Vec<u8> {
        let size = mib * MIB;
        let sectors = size / 512;
        let mut disk = vec![0u8; size as usize];
        let mut array = vec![0u8; 128 * 128];
        array[..16].copy_from_slice(&[0xAF; 16]);
        array[32..40].copy_from_slice(&first.to_le_bytes());
        array[40..48].copy_from_slice(&last.to_le_bytes());
        let array_crc = crc32(&array);
        disk[512..604].copy_from_slice(&header(1, sectors - 1, 2, sectors, array_crc));
        disk[1024..1024 + array.len()].copy_from_slice(&array);
        let at = (backup_array * 512) as usize;
        disk[at..at + array.len()].copy_from_slice(&array);
        let at = ((sectors - 1) * 512) as usize;
        disk[at..at + 92].copy_from_slice(&header(
            sectors - 1,
            1,
            backup_array,
            sectors,
            array_crc,
        ));
        disk
    }

    /// Writes MBR slot `i`: type `kind` over `first..first + count` (LBAs).
    fn mbr_slot(disk: &mut [u8], i: usize, kind: u8, first: u32, count: u32) {
        let e = 0x1BE + 16 * i;
        disk[e + 4] = kind;
        disk[e + 8..e + 12].copy_from_slice(&first.to_le_bytes());
        disk[e + 12..e + 16].copy_from_slice(&count.to_le_bytes());
        disk[510] = 0x55;
        disk[511] = 0xAA;
    }

    fn layout(disk: &Vec<u8>) -> Result<Option<Layout>, Reason> {
        read(disk, disk.len() as u64)
    }

    /// (number, start, size) of each partition.
    fn parts(layout: &Layout) -> Vec<(u32, u64, u64)> {
        layout
            .partitions
            .iter()
            .map(|p| (p.number, p.start, p.size))
            .collect()
    }

    #[test]
    fn gpt_counts_only_behind_a_protective_or_hybrid_mbr() {
        let (first, last) = (2048, 4095);
        let expected = vec![(1, first * 512, (last - first + 1) * 512)];

        let mut disk = gpt_disk(4, first, last);
        mbr_slot(&mut disk, 0, 0xEE, 1, 8191);
        assert_eq!(parts(&layout(&disk).unwrap().unwrap()), expected);
        // Hybrid: the GPT still rules (the kernel's and blkid's choice).
        mbr_slot(&mut disk, 1, 0x83, 2048, 2048);
        assert_eq!(parts(&layout(&disk).unwrap().unwrap()), expected);
        // The primary gone: the backup behind the protective MBR is used.
        disk[512..1024].fill(0);
        assert_eq!(parts(&layout(&disk).unwrap().unwrap()), expected);

        // No MBR at all: a GPT the kernel ignores, so a conflict.
        let disk = gpt_disk(4, first, last);
        let err = layout(&disk).unwrap_err();
        assert!(
            err.contains("conflicting partition tables") && err.contains("byte 512"),
            "{err}"
        );
    }

    #[test]
    fn stale_gpt_behind_a_plain_mbr_is_a_conflict() {
        // An MBR partition where no GPT partition was: the plan by the
        // GPT would probe the wrong place.
        let mut disk = gpt_disk(4, 2048, 4095);
        mbr_slot(&mut disk, 0, 0x83, 4096, 2048);
        let err = layout(&disk).unwrap_err();
        assert!(
            err.contains("MBR without a protective (0xEE) entry"),
            "{err}"
        );
        assert!(err.contains("byte 512"), "{err}");
        // Only the backup left (the first MiB zeroed, then an MBR written).
        disk[512..MIB as usize].fill(0);
        let err = layout(&disk).unwrap_err();
        assert!(err.contains(&format!("byte {}", 4 * MIB - 512)), "{err}");
        // A broken stale header is as much a conflict as a valid one.
        let at = (4 * MIB - 512 + 100) as usize;
        disk[at] ^= 1;
        assert!(layout(&disk).is_err());
        // Without any GPT signature the MBR is used.
        disk[(4 * MIB - 512) as usize..].fill(0);
        let layout = layout(&disk).unwrap().unwrap();
        assert_eq!(parts(&layout), [(1, 4096 * 512, 2048 * 512)]);
    }

    #[test]
    fn sgdisk_gpt_then_zeroed_start_and_sfdisk_mbr_is_a_conflict() {
        // The sequence of the bug report, with the real tools.
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        let img_s = img.to_str().unwrap();
        run("truncate", &["-s", "64M", img_s]);
        run("sgdisk", &["-o", "-n1:8M:+32M", img_s]);
        let file = std::fs::File::open(&img).unwrap();
        assert_eq!(
            parts(&read(&file, 64 * MIB).unwrap().unwrap()),
            [(1, 8 * MIB, 32 * MIB)]
        );
        // sgdisk's hybrid MBR: the GPT still counts.
        run("sgdisk", &["-h", "1", img_s]);
        assert_eq!(
            parts(&read(&file, 64 * MIB).unwrap().unwrap()),
            [(1, 8 * MIB, 32 * MIB)]
        );
        run(
            "dd",
            &[
                "if=/dev/zero",
                &format!("of={img_s}"),
                "bs=1M",
                "count=1",
                "conv=notrunc",
                "status=none",
            ],
        );
        run(
            "bash",
            &[
                "-c",
                &format!("printf 'label: dos\\n,48M,83\\n' | sfdisk -q {img_s}"),
            ],
        );
        let err = read(&file, 64 * MIB).unwrap_err();
        assert!(err.contains("conflicting partition tables"), "{err}");
        // The planner reads it whole and says why.
        let plan = crate::fs::plan(&file, 64 * MIB);
        assert_eq!(plan.ranges, vec![0..64 * MIB]);
        assert_eq!(plan.partitions.len(), 1);
        assert_eq!(plan.partitions[0].reason.as_deref(), Some(err.as_str()));
    }

    /// Writes an EBR at `lba`: the logical partition at `rel` (from the EBR)
    /// for `count` sectors, and the link to the next EBR at `next` (from the
    /// extended partition's start), if any.
    fn ebr(disk: &mut [u8], lba: u64, rel: u32, count: u32, next: Option<(u32, u32)>) {
        let at = (lba * 512) as usize;
        let sector = &mut disk[at..at + 512];
        mbr_slot(sector, 0, 0x83, rel, count);
        if let Some((next, next_count)) = next {
            mbr_slot(sector, 1, 0x05, next, next_count);
        }
    }

    #[test]
    fn boot_records_inside_free_space_are_read() {
        // Two ext4 images, each with the next EBR in its free last 4 KiB: a
        // primary one before the extended partition, a logical one before
        // the last logical partition.
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("ext4");
        let img_s = img.to_str().unwrap();
        run("truncate", &["-s", "16M", img_s]);
        run(
            "mkfs.ext4",
            &["-q", "-F", "-b", "4096", "-E", "nodiscard", img_s],
        );
        let ext4 = std::fs::read(&img).unwrap();
        let mut disk = vec![0u8; 40 * MIB as usize];
        let (p1, l5, l6) = (2048u64, 36864u64, 71680u64);
        let (ebr1, ebr2) = (p1 + 32768 - 8, l5 + 32768 - 8);
        let ext_count = (disk.len() / 512) as u64 - ebr1;
        for start in [p1, l5] {
            let at = (start * 512) as usize;
            disk[at..at + ext4.len()].copy_from_slice(&ext4);
        }
        mbr_slot(&mut disk, 0, 0x83, p1 as u32, 32768);
        mbr_slot(&mut disk, 1, 0x05, ebr1 as u32, ext_count as u32);
        let link = ((ebr2 - ebr1) as u32, (ext_count - (ebr2 - ebr1)) as u32);
        ebr(&mut disk, ebr1, (l5 - ebr1) as u32, 32768, Some(link));
        ebr(&mut disk, ebr2, (l6 - ebr2) as u32, 8192, None);

        let layout = layout(&disk).unwrap().unwrap();
        assert_eq!(
            parts(&layout),
            [
                (1, p1 * 512, 16 * MIB),
                (5, l5 * 512, 16 * MIB),
                (6, l6 * 512, 4 * MIB)
            ]
        );
        assert_eq!(
            layout.tables,
            [
                0..512,
                ebr1 * 512..ebr1 * 512 + 512,
                ebr2 * 512..ebr2 * 512 + 512
            ]
        );
        let plan = crate::fs::plan(&disk, disk.len() as u64);
        let handling: Vec<&str> = plan
            .partitions
            .iter()
            .map(|p| p.handling.as_str())
            .collect();
        assert_eq!(handling, ["allocated-only", "allocated-only", "whole"]);
        for lba in [0, ebr1, ebr2] {
            assert!(
                plan.overlaps(lba * 512..lba * 512 + 512)
                    && plan
                        .ranges
                        .iter()
                        .any(|r| r.start <= lba * 512 && lba * 512 + 512 <= r.end),
                "boot record at LBA {lba} not read: {:?}",
                plan.ranges
            );
        }
        // The free space around them is still skipped.
        assert!(!plan.overlaps(ebr1 * 512 - 4096..ebr1 * 512));
        assert!(!plan.overlaps(ebr2 * 512 + 512..ebr2 * 512 + 4096));
    }

    #[test]
    fn both_gpt_copies_are_table_sectors_wherever_their_headers_put_them() {
        let sectors = 4 * MIB / 512;
        let mut disk = gpt_disk(4, 2048, 4095);
        mbr_slot(&mut disk, 0, 0xEE, 1, 8191);
        let tables = layout(&disk).unwrap().unwrap().tables;
        for (start, end) in [
            (0, 1),
            (1, 2),
            (2, 34),
            (sectors - 33, sectors - 1),
            (sectors - 1, sectors),
        ] {
            assert!(
                tables
                    .iter()
                    .any(|t| t.start <= start * 512 && end * 512 <= t.end),
                "LBAs {start}..{end} not in {tables:?}"
            );
        }
        // A backup array away from its header (a disk grown, a tool's
        // choice): the header says where, and that is read.
        let mut disk = gpt_disk_with_backup_array(4, 2048, 4095, 5000);
        mbr_slot(&mut disk, 0, 0xEE, 1, 8191);
        let tables = layout(&disk).unwrap().unwrap().tables;
        assert!(tables.contains(&(5000 * 512..5032 * 512)), "{tables:?}");
    }
}
