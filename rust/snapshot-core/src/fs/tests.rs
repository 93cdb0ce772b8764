//! Tests of the planner on real images made by mkfs, sgdisk and sfdisk,
//! checked against the filesystem tools' own view (`dumpe2fs`, `xfs_db`),
//! plus property tests feeding malformed input.
//!
//! The tools must be installed (tests/apt-packages.txt lists them); a
//! missing tool fails the test with its name rather than skipping it.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use proptest::prelude::*;

use super::*;

const MIB: u64 = 1 << 20;

/// Runs a tool and returns its standard output; fails the test, naming the
/// tool, when it is missing or fails.
pub(super) fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|err| {
        panic!("cannot run {cmd} (install it, see tests/apt-packages.txt): {err}")
    });
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sh(script: &str) -> String {
    run("bash", &["-euo", "pipefail", "-c", script])
}

/// The number after `prefix` on the first line of a tool's output that
/// starts with it (`Block size:` of dumpe2fs, `agcount = ` of xfs_db).
fn field<T: std::str::FromStr>(out: &str, prefix: &str) -> T {
    let text = out
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starts with {prefix:?} in:\n{out}"))
        .trim();
    text.parse()
        .unwrap_or_else(|_| panic!("{prefix:?} is followed by {text:?}, not a number"))
}

/// `xfs_db -r -c OBJECT -c "p FIELDS" IMG`: fields of one object, read with
/// [`field`] and the prefix `NAME = `.
fn xfs_db_print(img_s: &str, object: &str, fields: &str) -> String {
    run(
        "xfs_db",
        &["-r", "-c", object, "-c", &format!("p {fields}"), img_s],
    )
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A directory tree with files of a few sizes, a symlink and a hole.
fn populate(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    let mut seed = 0x1234_5678_u64;
    for (i, size) in [0usize, 1, 4095, 4096, 70_000, 1 << 20, 3 << 20]
        .into_iter()
        .enumerate()
    {
        let data: Vec<u8> = (0..size)
            .map(|_| {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                (seed >> 33) as u8
            })
            .collect();
        std::fs::write(dir.join(format!("sub/file{i}")), &data).unwrap();
    }
    std::os::unix::fs::symlink("sub/file3", dir.join("link")).unwrap();
}

/// Makes an ext filesystem image of `mib` MiB with `mkfs_args`, populated from a tree.
fn ext_image(dir: &Path, name: &str, mib: u64, mkfs_args: &[&str]) -> PathBuf {
    let tree = dir.join(format!("{name}.tree"));
    populate(&tree);
    let img = dir.join(name);
    let size = format!("{mib}M");
    let tree_s = tree.to_str().unwrap();
    let mut args = vec!["-q", "-F", "-d", tree_s];
    args.extend_from_slice(mkfs_args);
    args.push(img.to_str().unwrap());
    args.push(&size);
    run("mke2fs", &args);
    img
}

/// Blocks of inode tables past the inodes ever used, per `dumpe2fs`'s
/// "unused inodes" counts (printed only with descriptor checksums): the
/// planner skips them.
fn dumpe2fs_unused_itable(img: &Path) -> Vec<Range<u64>> {
    let out = run("dumpe2fs", &[img.to_str().unwrap()]);
    let (bs, ipg, isize): (u64, u64, u64) = (
        field(&out, "Block size:"),
        field(&out, "Inodes per group:"),
        field(&out, "Inode size:"),
    );
    let mut skip = Vec::new();
    let mut table: Option<Range<u64>> = None;
    for line in out.lines() {
        if let Some(rest) = line.trim().strip_prefix("Inode table at ") {
            let span = rest.split_whitespace().next().unwrap();
            let (a, b) = span.split_once('-').unwrap();
            table = Some(a.parse().unwrap()..b.parse::<u64>().unwrap() + 1);
        } else if line.ends_with(" unused inodes") {
            let unused: u64 = line
                .rsplit(", ")
                .next()
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let t = table.take().unwrap();
            skip.push(t.start + ((ipg - unused) * isize).div_ceil(bs)..t.end);
        }
    }
    normalize(&mut skip, u64::MAX);
    skip
}

/// Blocks of the journal (inode 8) but its first, per `debugfs`: the
/// planner skips them when the journal is empty, as it is on a clean image.
/// Journals mapped by indirect blocks (ext3) are kept whole.
fn debugfs_journal_body(img: &Path) -> Vec<Range<u64>> {
    let stat = run("debugfs", &["-R", "stat <8>", img.to_str().unwrap()]);
    if !stat.contains("EXTENTS:") {
        return Vec::new();
    }
    let out = run("debugfs", &["-R", "blocks <8>", img.to_str().unwrap()]);
    let mut body: Vec<Range<u64>> = out
        .split_whitespace()
        .skip(1)
        .map(|b| b.parse::<u64>().unwrap())
        .map(|b| b..b + 1)
        .collect();
    normalize(&mut body, u64::MAX);
    body
}

/// What the planner keeps of an ext filesystem by the tools' account:
/// blocks not free, less unused inode table tails and the empty journal.
fn ext_expected_blocks(img: &Path, free: &[Range<u64>], blocks: u64) -> Vec<Range<u64>> {
    let mut skip = dumpe2fs_unused_itable(img);
    skip.extend(debugfs_journal_body(img));
    normalize(&mut skip, u64::MAX);
    subtract(&complement(free, blocks), &skip)
}

/// Blocks `dumpe2fs` lists free, as a sorted list of block ranges.
fn dumpe2fs_free(img: &Path) -> (u64, u64, Vec<Range<u64>>) {
    let out = run("dumpe2fs", &[img.to_str().unwrap()]);
    let block_size = field(&out, "Block size:");
    let blocks = field(&out, "Block count:");
    let mut free = Vec::new();
    for line in out.lines() {
        let Some(list) = line.strip_prefix("  Free blocks: ") else {
            continue;
        };
        for part in list.split(", ").filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            free.push(a.parse::<u64>().unwrap()..b.parse::<u64>().unwrap() + 1);
        }
    }
    normalize(&mut free, u64::MAX);
    (block_size, blocks, free)
}

/// Complement of sorted `holes` within `0..end`.
fn complement(holes: &[Range<u64>], end: u64) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut cursor = 0;
    for h in holes {
        if h.start > cursor {
            out.push(cursor..h.start);
        }
        cursor = cursor.max(h.end);
    }
    if cursor < end {
        out.push(cursor..end);
    }
    out
}

fn scale(ranges: &[Range<u64>], factor: u64) -> Vec<Range<u64>> {
    ranges
        .iter()
        .map(|r| r.start * factor..r.end * factor)
        .collect()
}

fn plan_file(path: &Path) -> DiskPlan {
    let file = std::fs::File::open(path).unwrap();
    let size = file.metadata().unwrap().len();
    plan(&file, size)
}

fn assert_well_formed(plan: &DiskPlan, size: u64) {
    for pair in plan.ranges.windows(2) {
        assert!(
            pair[0].end < pair[1].start,
            "ranges overlap or touch: {pair:?}"
        );
    }
    for r in &plan.ranges {
        assert!(
            r.start < r.end && r.end <= size,
            "bad range {r:?} for size {size}"
        );
    }
}

/// The exact set of bytes the plan must read for an unpartitioned ext image:
/// every block dumpe2fs does not list as free, plus the boot area.
fn check_ext_against_dumpe2fs(img: &Path) -> DiskPlan {
    let plan = plan_file(img);
    let size = std::fs::metadata(img).unwrap().len();
    assert_well_formed(&plan, size);
    let report = &plan.partitions[0];
    assert_eq!(report.handling, ALLOCATED_ONLY, "{report:?}");
    let (bs, blocks, free) = dumpe2fs_free(img);
    let in_use = ext_expected_blocks(img, &free, blocks);
    let mut expected = scale(&in_use, bs);
    expected.push(0..MIB.min(size));
    expected.push(blocks * bs..size);
    normalize(&mut expected, size);
    assert_eq!(
        plan.ranges,
        expected,
        "plan differs from dumpe2fs for {}",
        img.display()
    );
    // Block 0 of a 1 KiB-block filesystem is the boot block, outside the bitmaps.
    let boot_block = u64::from(bs == 1024);
    let used: u64 = (complement(&free, blocks)
        .iter()
        .map(|r| r.end - r.start)
        .sum::<u64>()
        - boot_block)
        * bs;
    assert_eq!(report.bytes_used, Some(used));
    plan
}

/// Writes what a capture with this plan restores to: the planned bytes of
/// `img` and zeros elsewhere. The copy is sparse (zero blocks are holes), so
/// that the tests' scratch space holds little more than the disks' data: CI
/// machines can be short of room.
fn planned_copy(img: &Path, plan: &DiskPlan, out: &Path) {
    use std::os::unix::fs::FileExt;
    let mut data = std::fs::read(img).unwrap();
    plan.zero_unplanned(0, &mut data);
    let file = std::fs::File::create(out).unwrap();
    file.set_len(data.len() as u64).unwrap();
    for (i, block) in data.chunks(64 << 10).enumerate() {
        if block.iter().any(|&b| b != 0) {
            file.write_all_at(block, i as u64 * (64 << 10)).unwrap();
        }
    }
}

#[test]
fn ext_variants_match_dumpe2fs() {
    let dir = tempfile::tempdir().unwrap();
    let variants: &[(&str, &[&str])] = &[
        ("ext4", &["-t", "ext4"]),
        ("ext4-1k", &["-t", "ext4", "-b", "1024"]),
        (
            "ext4-uninit-bg",
            &["-t", "ext4", "-O", "^metadata_csum,uninit_bg"],
        ),
        ("ext4-no-flex", &["-t", "ext4", "-O", "^flex_bg"]),
        ("ext4-32bit", &["-t", "ext4", "-O", "^64bit"]),
        ("ext4-sparse2", &["-t", "ext4", "-O", "sparse_super2"]),
        (
            "ext4-meta-bg",
            &["-t", "ext4", "-O", "meta_bg,^resize_inode"],
        ),
        (
            "ext4-meta-bg-1k",
            &[
                "-t",
                "ext4",
                "-b",
                "1024",
                "-g",
                "1024",
                "-O",
                "meta_bg,^resize_inode",
            ],
        ),
        (
            "ext4-inline-quota",
            &["-t", "ext4", "-O", "inline_data,quota,project"],
        ),
        (
            "ext4-small-groups",
            &["-t", "ext4", "-g", "1024", "-N", "2048"],
        ),
        ("ext3", &["-t", "ext3"]),
        ("ext2", &["-t", "ext2"]),
    ];
    for (name, args) in variants {
        let img = ext_image(dir.path(), name, 96, args);
        // mke2fs -d leaves quota usage unrecorded: settle it so the source is clean.
        sh(&format!(
            "e2fsck -fy {0} > /dev/null || [ $? -le 1 ]; e2fsck -fn {0} > /dev/null",
            img.display()
        ));
        let plan = check_ext_against_dumpe2fs(&img);
        // The copy passes a full forced check: nothing skipped was needed.
        let copy = dir.path().join(format!("{name}.copy"));
        planned_copy(&img, &plan, &copy);
        run("e2fsck", &["-fn", copy.to_str().unwrap()]);
        let report = &plan.partitions[0];
        assert_eq!(
            report.content,
            if name.starts_with("ext4") {
                "ext4"
            } else {
                *name
            },
            "{name}"
        );
        // Mostly empty: far less than the image is read.
        assert!(
            report.bytes_to_read < 96 * MIB / 2,
            "{name} reads {}",
            report.bytes_to_read
        );
    }
}

#[test]
fn ext_needs_recovery_is_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let img = ext_image(dir.path(), "rec", 64, &["-t", "ext4"]);
    run(
        "debugfs",
        &["-w", "-R", "feature needs_recovery", img.to_str().unwrap()],
    );
    let plan = plan_file(&img);
    assert_eq!(plan.ranges, vec![0..64 * MIB]);
    let report = &plan.partitions[0];
    assert_eq!(report.handling, WHOLE);
    assert!(
        report
            .reason
            .as_deref()
            .unwrap()
            .contains("journal needs recovery"),
        "{report:?}"
    );
}

/// Overwrites `len` bytes at `offset` of a file.
pub(super) fn poke(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// Block number of group `g`'s block bitmap, from dumpe2fs.
fn bitmap_block(img: &Path, g: usize) -> u64 {
    let out = run("dumpe2fs", &[img.to_str().unwrap()]);
    let line = out
        .lines()
        .filter(|l| l.contains("Block bitmap at "))
        .nth(g)
        .unwrap();
    let at = line.split("Block bitmap at ").nth(1).unwrap();
    at.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn ext_corruption_falls_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    // (mkfs args, what to corrupt, expected words in the reason)
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["-t", "ext4"],
            "bitmap",
            "block bitmap of group 0 checksum mismatch",
        ),
        (
            &["-t", "ext4", "-O", "^metadata_csum,uninit_bg"],
            "bitmap",
            "block bitmap of group 0",
        ),
        (&["-t", "ext2"], "bitmap", "block bitmap of group 0"),
        (&["-t", "ext2"], "bitmap-zero", "marks metadata block"),
        (&["-t", "ext4"], "descriptor", "group descriptor 0 checksum"),
        (
            &["-t", "ext4", "-O", "^metadata_csum,uninit_bg"],
            "descriptor",
            "group descriptor 0 checksum",
        ),
        (&["-t", "ext4"], "superblock", "superblock checksum"),
        (&["-t", "ext2"], "superblock", "invalid blocks per group"),
    ];
    for (i, (args, what, reason)) in cases.iter().enumerate() {
        let img = ext_image(dir.path(), &format!("c{i}"), 64, args);
        let bs = dumpe2fs_free(&img).0;
        let gdt = if bs == 1024 { 2048 } else { bs };
        match *what {
            "bitmap" => {
                // Clear a byte of in-use bits past the group's first metadata:
                // those blocks would be skipped if the bitmap were trusted.
                let at = bitmap_block(&img, 0) * bs;
                let bitmap = &std::fs::read(&img).unwrap()[at as usize..(at + bs) as usize];
                let last_full = bitmap.iter().rposition(|&b| b == 0xFF).unwrap() as u64;
                poke(&img, at + last_full, &[0u8]);
            }
            "bitmap-zero" => poke(&img, bitmap_block(&img, 0) * bs, &vec![0u8; bs as usize]),
            "descriptor" => poke(&img, gdt + 0xC, &[0x00, 0x10]),
            "superblock" => poke(&img, 1024 + 0x20, &[0x01, 0x00, 0x00, 0x40]),
            _ => unreachable!(),
        }
        let plan = plan_file(&img);
        let report = &plan.partitions[0];
        assert_eq!(
            plan.ranges,
            vec![0..64 * MIB],
            "case {i} {args:?} {what}: {report:?}"
        );
        assert!(
            report.reason.as_deref().unwrap_or("").contains(reason),
            "case {i}: {report:?}"
        );
    }
}

/// Makes an XFS image populated from a tree (mounted through a loop device: needs root).
fn xfs_image(dir: &Path, name: &str, mib: u64, mkfs_args: &[&str], dirty: bool) -> PathBuf {
    let img = dir.join(name);
    let tree = dir.join(format!("{name}.tree"));
    populate(&tree);
    let mnt = dir.join(format!("{name}.mnt"));
    std::fs::create_dir_all(&mnt).unwrap();
    run(
        "truncate",
        &["-s", &format!("{mib}M"), img.to_str().unwrap()],
    );
    let mut args = vec!["-q", "-f"];
    args.extend_from_slice(mkfs_args);
    args.push(img.to_str().unwrap());
    run("mkfs.xfs", &args);
    if mkfs_args.contains(&"crc=0") {
        // This kernel cannot mount v4 XFS: the v4 case is checked on mkfs' own output.
        return img;
    }
    assert!(
        is_root(),
        "XFS image tests mount a loop device: run them as root"
    );
    let (img_s, mnt_s, tree_s) = (
        img.to_str().unwrap(),
        mnt.to_str().unwrap(),
        tree.to_str().unwrap(),
    );
    // A file written then deleted leaves stale blocks; a shutdown leaves the log dirty.
    let finish = if dirty {
        format!("xfs_io -x -c 'shutdown' {mnt_s}")
    } else {
        String::from("true")
    };
    sh(&format!(
        "mount -o loop {img_s} {mnt_s}; trap 'umount {mnt_s}' EXIT; \
         cp -a {tree_s}/. {mnt_s}/; head -c 8M /dev/urandom > {mnt_s}/gone; sync; rm {mnt_s}/gone; \
         touch {mnt_s}/after; sync; {finish}"
    ));
    img
}

/// Free extents from `xfs_db freesp`, less the AG free list blocks (freesp
/// counts them free; the planner keeps them, as they are not in the btrees).
fn xfs_free(img: &Path) -> (u64, u64, u64, Vec<Range<u64>>) {
    let img_s = img.to_str().unwrap();
    let geo = xfs_db_print(img_s, "sb 0", "blocksize agblocks dblocks agcount");
    let (bs, agblocks, dblocks, agcount): (u64, u64, u64, u64) = (
        field(&geo, "blocksize = "),
        field(&geo, "agblocks = "),
        field(&geo, "dblocks = "),
        field(&geo, "agcount = "),
    );
    let out = run("xfs_db", &["-r", "-c", "freesp -d", img_s]);
    let mut free = Vec::new();
    for line in out.lines() {
        let nums: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        if let [ag, agbno, len] = nums[..] {
            let start = ag * agblocks + agbno;
            free.push(start..start + len);
        }
    }
    let mut agfl = Vec::new();
    for ag in 0..agcount {
        let agf = xfs_db_print(img_s, &format!("agf {ag}"), "flfirst flcount");
        let (first, count): (usize, usize) = (field(&agf, "flfirst = "), field(&agf, "flcount = "));
        let list = run(
            "xfs_db",
            &["-r", "-c", &format!("agfl {ag}"), "-c", "p bno", img_s],
        );
        let slots: Vec<&str> = list
            .split(" = ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .collect();
        for k in 0..count {
            let slot = slots[(first + k) % slots.len()];
            let agbno: u64 = slot.split(':').nth(1).unwrap().parse().unwrap();
            agfl.push(ag * agblocks + agbno..ag * agblocks + agbno + 1);
        }
    }
    normalize(&mut agfl, u64::MAX);
    let free = complement(&agfl, u64::MAX)
        .iter()
        .flat_map(|keep| {
            free.iter().filter_map(|f| {
                let r = f.start.max(keep.start)..f.end.min(keep.end);
                (r.start < r.end).then_some(r)
            })
        })
        .collect::<Vec<_>>();
    let mut free = free;
    normalize(&mut free, u64::MAX);
    (bs, agblocks, dblocks, free)
}

#[test]
fn xfs_matches_xfs_db_and_dirty_log_is_whole() {
    let dir = tempfile::tempdir().unwrap();
    for (name, args) in [
        ("v5", &[][..]),
        ("v4", &["-m", "crc=0"][..]),
        ("v5-rmap", &["-m", "rmapbt=1,reflink=1"][..]),
    ] {
        let img = xfs_image(dir.path(), name, 320, args, false);
        let logprint = run("xfs_logprint", &["-t", img.to_str().unwrap()]);
        assert!(logprint.contains("<CLEAN>"), "{logprint}");
        let plan = plan_file(&img);
        let size = 320 * MIB;
        assert_well_formed(&plan, size);
        let report = &plan.partitions[0];
        assert_eq!(
            (report.content.as_str(), report.handling.as_str()),
            ("xfs", ALLOCATED_ONLY),
            "{name}: {report:?}"
        );
        let (bs, _, dblocks, free) = xfs_free(&img);
        let mut expected = scale(&complement(&free, dblocks), bs);
        expected.push(0..MIB);
        expected.push(dblocks * bs..size);
        normalize(&mut expected, size);
        assert_eq!(
            plan.ranges, expected,
            "{name}: plan differs from xfs_db freesp"
        );
        assert!(report.bytes_to_read < size / 2, "{name}: {report:?}");
        let copy = dir.path().join(format!("{name}.copy"));
        planned_copy(&img, &plan, &copy);
        run("xfs_repair", &["-n", "-f", copy.to_str().unwrap()]);
    }
    let img = xfs_image(dir.path(), "dirty", 320, &[], true);
    let logprint = run("xfs_logprint", &["-t", img.to_str().unwrap()]);
    assert!(logprint.contains("<DIRTY>"), "{logprint}");
    let plan = plan_file(&img);
    assert_eq!(plan.ranges, vec![0..320 * MIB]);
    assert!(
        plan.partitions[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("log"),
        "{:?}",
        plan.partitions
    );
}

#[test]
fn ext4_dirty_journal_after_shutdown_is_whole() {
    assert!(is_root(), "this test mounts a loop device: run it as root");
    let dir = tempfile::tempdir().unwrap();
    let img = ext_image(dir.path(), "live", 64, &["-t", "ext4"]);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let (img_s, mnt_s) = (img.to_str().unwrap(), mnt.to_str().unwrap());
    sh(&format!(
        "mount -o loop {img_s} {mnt_s}; trap 'umount {mnt_s}' EXIT; \
         head -c 1M /dev/urandom > {mnt_s}/new; sync; xfs_io -x -c 'shutdown' {mnt_s}"
    ));
    let report = plan_file(&img).partitions.remove(0);
    assert_eq!(report.handling, WHOLE);
    assert!(report.reason.unwrap().contains("journal needs recovery"));
}

/// Builds a disk: a table made by `script`, then partition images copied in.
fn assemble(disk: &Path, size_mib: u64, table: &str, parts: &[(u32, &Path)]) {
    run(
        "truncate",
        &["-s", &format!("{size_mib}M"), disk.to_str().unwrap()],
    );
    sh(&table.replace("DISK", disk.to_str().unwrap()));
    let dump = run("sfdisk", &["-d", disk.to_str().unwrap()]);
    for (number, img) in parts {
        let node = format!("{}{} :", disk.display(), number);
        let start = dump
            .lines()
            .find(|l| l.starts_with(&node))
            .and_then(|l| l.split("start=").nth(1))
            .and_then(|s| s.split(',').next())
            .map(str::trim)
            .unwrap_or_else(|| panic!("partition {number} not in {dump}"));
        sh(&format!(
            "dd if={} of={} bs=512 seek={start} conv=notrunc status=none",
            img.display(),
            disk.display()
        ));
    }
}

/// A swap area of `size` (`32M`) made by mkswap.
fn swap_image(dir: &Path, size: &str) -> PathBuf {
    let swap = dir.join("swap");
    run("truncate", &["-s", size, swap.to_str().unwrap()]);
    run("mkswap", &["-q", swap.to_str().unwrap()]);
    swap
}

fn report_of(plan: &DiskPlan, number: u32) -> &PartitionReport {
    plan.partitions.iter().find(|p| p.number == number).unwrap()
}

#[test]
fn gpt_disk_with_boot_swap_and_ext4() {
    let dir = tempfile::tempdir().unwrap();
    let ext = ext_image(dir.path(), "root.ext4", 96, &["-t", "ext4"]);
    let swap = swap_image(dir.path(), "32M");
    let disk = dir.path().join("gpt.img");
    assemble(
        &disk,
        200,
        "sgdisk -o -n1:2048:+1M -t1:ef02 -n2:0:+16M -t2:ef00 -n3:0:+32M -t3:8200 -n4:0:+96M -t4:8300 -n5:0:0 DISK",
        &[(3, &swap), (4, &ext)],
    );
    let plan = plan_file(&disk);
    let size = 200 * MIB;
    assert_well_formed(&plan, size);
    let numbers: Vec<u32> = plan.partitions.iter().map(|p| p.number).collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5]);
    assert_eq!(report_of(&plan, 1).handling, WHOLE);
    assert_eq!(report_of(&plan, 2).handling, WHOLE);
    assert!(
        report_of(&plan, 2)
            .reason
            .as_deref()
            .unwrap()
            .contains("EFI system")
    );
    let swap_report = report_of(&plan, 3);
    assert_eq!(
        (swap_report.content.as_str(), swap_report.handling.as_str()),
        ("swap", HEADER_ONLY)
    );
    assert_eq!(swap_report.bytes_to_read, 4096);
    let root = report_of(&plan, 4);
    assert_eq!(
        (root.content.as_str(), root.handling.as_str()),
        ("ext4", ALLOCATED_ONLY)
    );
    // The unformatted last partition is read whole.
    assert_eq!(report_of(&plan, 5).handling, WHOLE);
    // The ext4 ranges equal what dumpe2fs says, shifted to the partition.
    let (bs, blocks, free) = dumpe2fs_free(&ext);
    let mut expected = scale(&ext_expected_blocks(&ext, &free, blocks), bs);
    expected.push(0..4096);
    normalize(&mut expected, 96 * MIB);
    let start = root.start;
    let inside: Vec<Range<u64>> = plan
        .ranges
        .iter()
        .filter(|r| r.start < start + root.size && r.end > start)
        .map(|r| r.start.max(start) - start..r.end.min(start + root.size) - start)
        .collect();
    assert_eq!(inside, expected);
    // Boot area, both GPTs and the gap after the last partition are read.
    assert_eq!(plan.ranges[0].start, 0);
    assert!(
        plan.ranges[0].end >= MIB + 17 * MIB + 4096,
        "{:?}",
        &plan.ranges[..2]
    );
    assert_eq!(plan.ranges.last().unwrap().end, size);

    // Primary GPT destroyed: the backup gives the same plan.
    poke(&disk, 512, &[0u8; 512]);
    let from_backup = plan_file(&disk);
    assert_eq!(from_backup.ranges, plan.ranges);
    // Both destroyed: the protective MBR remains, the disk is read whole.
    poke(&disk, size - 512, &[0u8; 512]);
    let broken = plan_file(&disk);
    assert_eq!(broken.ranges, vec![0..size]);
    assert!(
        broken.partitions[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("GPT"),
        "{broken:?}"
    );
}

#[test]
fn mbr_disk_with_logical_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let ext = ext_image(dir.path(), "l.ext4", 64, &["-t", "ext4"]);
    let ext2 = ext_image(dir.path(), "p.ext2", 40, &["-t", "ext2"]);
    let swap = swap_image(dir.path(), "16M");
    let disk = dir.path().join("mbr.img");
    assemble(
        &disk,
        160,
        "printf 'label: dos\\n,40M,83\\n,,5\\n,16M,82\\n,64M,83\\n,,83\\n' | sfdisk -q DISK",
        &[(1, &ext2), (5, &swap), (6, &ext)],
    );
    let plan = plan_file(&disk);
    assert_well_formed(&plan, 160 * MIB);
    let summary: Vec<(u32, &str, &str)> = plan
        .partitions
        .iter()
        .map(|p| (p.number, p.content.as_str(), p.handling.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (1, "ext2", ALLOCATED_ONLY),
            (5, "swap", HEADER_ONLY),
            (6, "ext4", ALLOCATED_ONLY),
            (7, "unknown", WHOLE)
        ]
    );
    // Every extended boot record sits in a gap, so it is read.
    let json = run("sfdisk", &["-J", disk.to_str().unwrap()]);
    assert!(json.contains("\"type\": \"5\""));
    for p in &plan.partitions[1..] {
        let ebr = p.start - 2048 * 512;
        assert!(
            plan.ranges
                .iter()
                .any(|r| r.start <= ebr && ebr + 512 <= r.end),
            "EBR before partition {} not read",
            p.number
        );
    }
    assert!(plan.bytes_to_read() < 160 * MIB / 2);
}

#[test]
fn unknown_disk_is_whole() {
    let disk: Vec<u8> = vec![7u8; 3 * 1024 * 1024];
    let plan = plan(&disk, disk.len() as u64);
    assert_eq!(plan.ranges, vec![0..disk.len() as u64]);
    assert_eq!(plan.partitions[0].handling, WHOLE);
    assert_eq!(super::plan(&Vec::new(), 0).ranges, Vec::<Range<u64>>::new());
}

/// Counts what the planner reads.
struct Counting<'a> {
    inner: &'a dyn ReadAt,
    bytes: std::sync::atomic::AtomicU64,
    calls: std::sync::atomic::AtomicU64,
}

impl ReadAt for Counting<'_> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::sync::atomic::Ordering::Relaxed;
        self.calls.fetch_add(1, Relaxed);
        self.bytes.fetch_add(buf.len() as u64, Relaxed);
        self.inner.read_at(offset, buf)
    }
}

#[test]
fn planning_a_64_gib_disk_reads_little() {
    // Sparse 64 GiB images: mkfs initialises lazily, so this is quick.
    let dir = tempfile::tempdir().unwrap();
    for (name, mkfs) in [
        ("ext4", "mkfs.ext4 -q -F -E nodiscard"),
        ("xfs", "mkfs.xfs -q -f -K"),
    ] {
        let img = dir.path().join(name);
        sh(&format!("truncate -s 64G {0} && {mkfs} {0}", img.display()));
        let file = std::fs::File::open(&img).unwrap();
        let counting = Counting {
            inner: &file,
            bytes: 0.into(),
            calls: 0.into(),
        };
        let started = std::time::Instant::now();
        let plan = plan(&counting, 64 << 30);
        let elapsed = started.elapsed();
        let (bytes, calls) = (counting.bytes.into_inner(), counting.calls.into_inner());
        eprintln!(
            "{name}: plan of 64 GiB read {bytes} bytes in {calls} reads, {elapsed:?}, plans {} bytes",
            plan.bytes_to_read()
        );
        assert_eq!(
            plan.partitions[0].handling, ALLOCATED_ONLY,
            "{:?}",
            plan.partitions
        );
        assert!(bytes < 16 * MIB, "{name}: planning read {bytes} bytes");
        assert!(calls < 2000, "{name}: planning made {calls} reads");
        assert!(
            plan.bytes_to_read() < (64 << 30) / 50,
            "{name}: {}",
            plan.bytes_to_read()
        );
    }
}

#[test]
fn xfs_log_verdict_matches_xfs_logprint_as_the_log_wraps() {
    // A small log (allowed by mkfs under the fstests variables) wraps a few
    // times over these rounds; after each clean unmount or shutdown the
    // planner's verdict must match xfs_logprint's CLEAN or DIRTY.
    assert!(is_root(), "this test mounts a loop device: run it as root");
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("wrap.img");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let (img_s, mnt_s) = (img.to_str().unwrap(), mnt.to_str().unwrap());
    sh(&format!(
        "truncate -s 320M {img_s} && QA_CHECK_FS=1 TEST_DIR=/tmp TEST_DEV=/dev/null mkfs.xfs -q -f -l size=1368b {img_s}"
    ));
    let mut heads = Vec::new();
    let (mut clean_seen, mut dirty_seen) = (0, 0);
    for round in 0..60u32 {
        let files = 300 + (round * 397) % 1700;
        let dirty = round % 6 == 5;
        let end = if dirty {
            format!("xfs_io -x -c shutdown {mnt_s}")
        } else {
            String::from("true")
        };
        sh(&format!(
            "mount -o loop {img_s} {mnt_s}; trap 'umount {mnt_s}' EXIT; mkdir -p {mnt_s}/d; \
             for j in $(seq {files}); do : > {mnt_s}/d/f$j; done; rm -rf {mnt_s}/d; sync; {end}"
        ));
        let logprint = run("xfs_logprint", &["-t", img_s]);
        let head_line = logprint
            .lines()
            .find(|l| l.contains("log tail:"))
            .unwrap()
            .to_string();
        heads.push(
            head_line
                .split("head: ")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_string(),
        );
        let report = plan_file(&img).partitions.remove(0);
        if logprint.contains("<CLEAN>") {
            clean_seen += 1;
            assert_eq!(
                report.handling, ALLOCATED_ONLY,
                "round {round}: {head_line}: {report:?}"
            );
        } else {
            assert!(logprint.contains("<DIRTY>"), "{logprint}");
            dirty_seen += 1;
            assert_eq!(report.handling, WHOLE, "round {round}: {head_line}");
            assert!(report.reason.unwrap().contains("log"));
            // Mounting replays the log; the next round starts clean.
            sh(&format!("mount -o loop {img_s} {mnt_s} && umount {mnt_s}"));
        }
    }
    eprintln!("log heads: {heads:?}");
    assert!(
        clean_seen > 40 && dirty_seen >= 8,
        "{clean_seen} clean, {dirty_seen} dirty"
    );
    // The log (10944 basic blocks) wrapped: heads went down at least twice.
    let heads: Vec<u64> = heads.iter().map(|h| h.parse().unwrap()).collect();
    let wraps = heads.windows(2).filter(|w| w[1] < w[0]).count();
    assert!(wraps >= 2, "log never wrapped: {heads:?}");
}

#[test]
fn plan_helpers_mask_and_overlap() {
    let plan = DiskPlan {
        ranges: vec![10..20, 30..35],
        partitions: Vec::new(),
    };
    assert!(!plan.overlaps(0..10));
    assert!(plan.overlaps(0..11));
    assert!(plan.overlaps(19..30));
    assert!(!plan.overlaps(20..30));
    assert!(!plan.overlaps(35..100));
    let mut buf = [1u8; 40];
    plan.zero_unplanned(0, &mut buf);
    let expected: Vec<u8> = (0..40u64)
        .map(|i| u8::from((10..20).contains(&i) || (30..35).contains(&i)))
        .collect();
    assert_eq!(buf.to_vec(), expected);
    let mut tail = [1u8; 10];
    plan.zero_unplanned(15, &mut tail);
    assert_eq!(tail, [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]);
    assert_eq!(DiskPlan::whole(5).ranges, vec![0..5]);
    assert_eq!(
        subtract(&[0..10, 20..30], &[5..22, 25..26]),
        vec![0..5, 22..25, 26..30]
    );
}

#[test]
fn gpt_with_4096_byte_sectors() {
    // sgdisk on a loop device with 4 KiB logical sectors writes a 4Kn GPT.
    assert!(is_root(), "this test creates a loop device: run it as root");
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("4kn.img");
    let swap = swap_image(dir.path(), "32M");
    run("truncate", &["-s", "64M", disk.to_str().unwrap()]);
    sh(&format!(
        "dev=$(losetup --find --show -b 4096 {0}); trap 'losetup -d $dev' EXIT; \
         sgdisk -o -n1:256:+8M -t1:ef00 -n2:0:+32M -t2:8200 $dev > /dev/null; \
         dd if={1} of={0} bs=4096 seek=2304 conv=notrunc status=none",
        disk.display(),
        swap.display()
    ));
    let plan = plan_file(&disk);
    let summary: Vec<(u32, u64, &str)> = plan
        .partitions
        .iter()
        .map(|p| (p.number, p.start, p.handling.as_str()))
        .collect();
    assert_eq!(summary, [(1, MIB, WHOLE), (2, 2304 * 4096, HEADER_ONLY)]);
    assert_eq!(
        plan.ranges,
        vec![0..2304 * 4096 + 4096, (2304 + 8192) * 4096..64 * MIB]
    );
}

// ---- property tests: malformed input never panics, never skips data ----

/// An image with a valid GPT whose entries are random, CRCs fixed up so the
/// parser goes past them.
fn gpt_with_entries(size: u64, entries: &[(u64, u64, u8)], num: u32, esize: u32) -> Vec<u8> {
    let mut disk = vec![0u8; size as usize];
    disk[510] = 0x55;
    disk[511] = 0xAA;
    disk[0x1BE + 4] = 0xEE;
    let esize_u = esize as usize;
    let mut array = vec![0u8; num as usize * esize_u];
    for (i, &(first, last, kind)) in entries.iter().enumerate().take(num as usize) {
        let e = &mut array[i * esize_u..(i + 1) * esize_u];
        e[0] = kind.max(1);
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
    }
    let sectors = size / 512;
    let mut hdr = vec![0u8; 92];
    hdr[..8].copy_from_slice(b"EFI PART");
    hdr[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    hdr[12..16].copy_from_slice(&92u32.to_le_bytes());
    hdr[24..32].copy_from_slice(&1u64.to_le_bytes());
    hdr[32..40].copy_from_slice(&(sectors - 1).to_le_bytes());
    hdr[40..48].copy_from_slice(&34u64.to_le_bytes());
    hdr[48..56].copy_from_slice(&(sectors - 34).to_le_bytes());
    hdr[72..80].copy_from_slice(&2u64.to_le_bytes());
    hdr[80..84].copy_from_slice(&num.to_le_bytes());
    hdr[84..88].copy_from_slice(&esize.to_le_bytes());
    hdr[88..92].copy_from_slice(&crc::crc32(&array).to_le_bytes());
    let c = crc::crc32(&hdr);
    hdr[16..20].copy_from_slice(&c.to_le_bytes());
    disk[512..604].copy_from_slice(&hdr);
    let end = (1024 + array.len()).min(disk.len());
    disk[1024..end].copy_from_slice(&array[..end - 1024]);
    disk
}

/// A filesystem image, its plan, and the byte ranges of its metadata that
/// the mutation tests corrupt.
type Fixture = (Vec<u8>, DiskPlan, Vec<Range<usize>>);

/// A small ext4 image (metadata_csum) and its plan, made once, with the
/// byte ranges of its metadata: superblock, descriptors, block bitmaps and
/// the first inodes.
fn ext4_fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let img = ext_image(
            dir.path(),
            "fuzz",
            16,
            &["-t", "ext4", "-b", "1024", "-g", "2048", "-N", "512"],
        );
        let data = std::fs::read(&img).unwrap();
        let plan = check_ext_against_dumpe2fs(&img);
        // Superblock, the 8 descriptors of 64 bytes, and 2048 bits of each bitmap.
        let mut hot = vec![1024..2048, 2048..2560];
        let out = run("dumpe2fs", &[img.to_str().unwrap()]);
        for line in out.lines().filter(|l| l.contains("Block bitmap at ")) {
            let at = line.split("Block bitmap at ").nth(1).unwrap();
            let block: usize = at
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap();
            hot.push(block * 1024..block * 1024 + 256);
        }
        // The first inodes (reserved ones, the journal, the root and the
        // first files), which the bitmap cross-check parses.
        let itable = out
            .lines()
            .find_map(|l| l.split("Inode table at ").nth(1))
            .and_then(|at| at.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|b| b.parse::<usize>().ok())
            .unwrap();
        hot.push(itable * 1024..itable * 1024 + 4096);
        (data, plan, hot)
    })
}

/// A small XFS image (v5, CRCs) and its plan, with the byte ranges of its
/// metadata: superblock, every AGF and free-space btree root, the log start.
fn xfs_fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fuzz.xfs");
        let img_s = img.to_str().unwrap();
        sh(&format!(
            "truncate -s 48M {img_s} && QA_CHECK_FS=1 TEST_DIR=/tmp TEST_DEV=/dev/null mkfs.xfs -q -f -l size=1368b {img_s}"
        ));
        let data = std::fs::read(&img).unwrap();
        let plan = plan_file(&img);
        assert_eq!(plan.partitions[0].handling, ALLOCATED_ONLY, "{:?}", plan.partitions);
        let (bs, agblocks, _, _) = xfs_free(&img);
        let agcount = u32::from_be_bytes(data[0x58..0x5C].try_into().unwrap()) as u64;
        let mut hot = vec![0..512];
        for ag in 0..agcount {
            let agf = (ag * agblocks * bs + 512) as usize;
            hot.push(agf..agf + 512);
            let root = u32::from_be_bytes(data[agf + 0x10..agf + 0x14].try_into().unwrap()) as u64;
            let at = ((ag * agblocks + root) * bs) as usize;
            hot.push(at..at + bs as usize);
        }
        let log_start = u64::from_be_bytes(data[0x30..0x38].try_into().unwrap());
        let log_at = (((log_start >> data[0x7C]) * agblocks + (log_start & ((1 << data[0x7C]) - 1))) * bs) as usize;
        hot.push(log_at..log_at + 16 * 512);
        (data, plan, hot)
    })
}

/// A disk image with some bytes flipped, without copying it.
struct Flipped<'a> {
    base: &'a [u8],
    edits: Vec<(usize, u8)>,
}

impl ReadAt for Flipped<'_> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.base.len());
        let n = buf.len().min(self.base.len() - start);
        buf[..n].copy_from_slice(&self.base[start..start + n]);
        for &(at, flip) in &self.edits {
            if (start..start + n).contains(&at) {
                buf[at - start] ^= flip;
            }
        }
        Ok(n)
    }
}

/// Whether every byte `inner` covers is covered by `outer` (both normalised).
fn covers(outer: &[Range<u64>], inner: &[Range<u64>]) -> bool {
    inner
        .iter()
        .all(|r| outer.iter().any(|o| o.start <= r.start && r.end <= o.end))
}

/// One flip of a metadata byte: which hot range, where in it, which bits.
type Edit = (prop::sample::Index, prop::sample::Index, u8);

/// One to three flips, each of at least one bit.
fn metadata_edits() -> impl Strategy<Value = Vec<Edit>> {
    proptest::collection::vec(
        (
            any::<prop::sample::Index>(),
            any::<prop::sample::Index>(),
            1u8..,
        ),
        1..4,
    )
}

/// Flips `edits` in the metadata of `fixture` and checks that the plan is
/// well formed and still reads at least what the filesystem uses.
fn check_mutated(fixture: &Fixture, edits: &[Edit]) -> Result<(), TestCaseError> {
    let (image, truth, hot) = fixture;
    let edits = edits
        .iter()
        .map(|(region, at, flip)| {
            let r = &hot[region.index(hot.len())];
            (r.start + at.index(r.len()), *flip)
        })
        .collect();
    let size = image.len() as u64;
    let plan = plan(&Flipped { base: image, edits }, size);
    assert_well_formed(&plan, size);
    prop_assert!(covers(&plan.ranges, &truth.ranges), "{:?}", plan.partitions);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_read_whole(data in proptest::collection::vec(any::<u8>(), 0..70_000)) {
        let size = data.len() as u64;
        let plan = plan(&data, size);
        assert_well_formed(&plan, size);
        let whole: Vec<Range<u64>> = if size == 0 { vec![] } else { vec![0..size] };
        prop_assert_eq!(plan.ranges, whole);
    }

    #[test]
    fn random_mbr_read_whole(
        entries in proptest::collection::vec((any::<u8>(), any::<u8>(), 0u32..5000, 0u32..5000), 4),
        ebrs in proptest::collection::vec((0u32..5000, 0u32..5000, 0u32..5000, any::<bool>()), 0..6),
    ) {
        // Without a known filesystem anywhere, every byte must be read.
        let mut disk = vec![0u8; 4096 * 512];
        disk[510] = 0x55;
        disk[511] = 0xAA;
        for (i, &(status, kind, first, count)) in entries.iter().enumerate() {
            let e = 0x1BE + 16 * i;
            disk[e] = status & 0x80;
            disk[e + 4] = if kind % 4 == 0 { 0x05 } else { kind };
            disk[e + 8..e + 12].copy_from_slice(&first.to_le_bytes());
            disk[e + 12..e + 16].copy_from_slice(&count.to_le_bytes());
        }
        for &(at, rel, next, more) in &ebrs {
            let base = (at % 4096) as usize * 512;
            disk[base + 510] = 0x55;
            disk[base + 511] = 0xAA;
            disk[base + 0x1BE + 4] = 0x83;
            disk[base + 0x1BE + 8..base + 0x1BE + 12].copy_from_slice(&rel.to_le_bytes());
            disk[base + 0x1BE + 12..base + 0x1BE + 16].copy_from_slice(&64u32.to_le_bytes());
            disk[base + 0x1CE + 4] = if more { 0x05 } else { 0 };
            disk[base + 0x1CE + 8..base + 0x1CE + 12].copy_from_slice(&next.to_le_bytes());
            disk[base + 0x1CE + 12..base + 0x1CE + 16].copy_from_slice(&64u32.to_le_bytes());
        }
        let size = disk.len() as u64;
        let plan = plan(&disk, size);
        assert_well_formed(&plan, size);
        prop_assert_eq!(plan.ranges, vec![0..size]);
    }

    #[test]
    fn random_gpt_read_whole(
        entries in proptest::collection::vec((0u64..9000, 0u64..9000, any::<u8>()), 0..8),
        num in 0u32..300,
        esize_pow in 0u32..4,
        size_sectors in 100u64..9000,
    ) {
        let size = size_sectors * 512;
        let disk = gpt_with_entries(size, &entries, num, 128 << esize_pow);
        let plan = plan(&disk, size);
        assert_well_formed(&plan, size);
        prop_assert_eq!(plan.ranges, vec![0..size]);
    }

    #[test]
    fn mutated_ext4_metadata_never_skips_data(
        edits in metadata_edits(),
    ) {
        // Any corruption of superblock, descriptors or bitmaps either is caught
        // (whole copy) or leaves the plan reading at least what is in use.
        check_mutated(ext4_fixture(), &edits)?;
    }

    #[test]
    fn mutated_xfs_metadata_never_skips_data(
        edits in metadata_edits(),
    ) {
        check_mutated(xfs_fixture(), &edits)?;
    }
}
