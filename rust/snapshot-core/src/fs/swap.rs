//! Linux swap areas: only the header page is kept (label, UUID, signature),
//! so the image holds a fresh swap area and never swapped-out memory.
//!
//! Ten bytes of signature are not enough to drop a partition's content: a
//! leftover `SWAPSPACE2` survives `mkfs` of another filesystem. A signature
//! counts as swap only behind the header blkid checks (version 1 in either
//! byte order, a last page set), and only what mkswap writes is planned
//! header-only: a last page that matches the partition, a non-zero UUID,
//! bad pages that fit the header page. A swap area holding a hibernation
//! image is read whole: the image is what the next boot resumes from.

use super::field::{be32, le32};
use super::{Allocation, HEADER_ONLY, Probe, Reason, Slice};

/// Page sizes Linux runs with; the signature sits in the last 10 bytes of the first page.
const PAGE_SIZES: [u64; 4] = [4096, 8192, 16384, 65536];
/// Signatures written over `SWAPSPACE2` while a hibernation image is stored.
const HIBERNATION: [&[u8]; 4] = [b"S1SUSPEND", b"S2SUSPEND", b"ULSUSPEND", b"LINHIB0001"];
/// Where the header (`version`, `last_page`, `nr_badpages`, `uuid`) starts.
const HEADER: u64 = 1024;
/// Where the bad page list starts, after the label and padding.
const BADPAGES: u64 = 1536;

/// The fields of a version 1 swap header, in the byte order they were written.
struct Header {
    last_page: u64,
    bad_pages: u64,
    uuid: Vec<u8>,
}

/// Reads the header the way the kernel does (byte-swapped if its version
/// reads 1 only that way); `None` when blkid would not call it swap.
fn header(slice: &Slice<'_>) -> Option<Header> {
    let h = slice.read(HEADER, 28).ok()?;
    let read: fn(&[u8], usize) -> Result<u32, Reason> = match le32(&h, 0).ok()? {
        1 => le32,
        _ if be32(&h, 0).ok()? == 1 => be32,
        _ => return None,
    };
    let last_page = u64::from(read(&h, 4).ok()?);
    (last_page != 0).then(|| Header {
        last_page,
        bad_pages: u64::from(read(&h, 8).unwrap_or(u32::MAX)),
        uuid: h[12..28].to_vec(),
    })
}

/// Recognises a swap area and plans its header page.
pub(crate) fn probe(slice: &Slice<'_>) -> Option<Probe> {
    for page in PAGE_SIZES {
        let Ok(tail) = slice.read(page - 10, 10) else {
            break;
        };
        let hibernation = HIBERNATION.iter().any(|sig| tail.starts_with(sig));
        if !hibernation && tail != b"SWAPSPACE2" {
            continue;
        }
        // The header is at the same place for every page size: without a
        // valid one the signature is stray bytes.
        let header = header(slice)?;
        let result = if hibernation {
            Err("swap holds a hibernation image".into())
        } else {
            plan(slice, page, &header)
        };
        return Some(Probe {
            content: "swap".into(),
            result,
        });
    }
    None
}

/// Header-only when the header is what mkswap writes for this partition.
fn plan(slice: &Slice<'_>, page: u64, header: &Header) -> Result<Allocation, Reason> {
    let pages = slice.size() / page;
    if header.last_page != pages.saturating_sub(1) {
        return Err(format!(
            "swap header's last page {} does not match the partition's {pages} pages of {page} bytes",
            header.last_page
        ));
    }
    if header.uuid.iter().all(|&b| b == 0) {
        return Err("swap header has no UUID (not as mkswap writes it)".into());
    }
    if header.bad_pages > (page - 10 - BADPAGES) / 4 {
        return Err("swap header lists more bad pages than its page holds".into());
    }
    Ok(Allocation {
        ranges: vec![0..page],
        bytes_used: None,
        handling: HEADER_ONLY,
    })
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::fs::tests::{poke, run};
    use crate::fs::{ALLOCATED_ONLY, DiskPlan, HEADER_ONLY, WHOLE, plan};

    /// A sparse file of `size` (`32M`) made by `cmd args FILE`.
    fn made(dir: &Path, name: &str, size: &str, cmd: &str, args: &[&str]) -> PathBuf {
        let path = dir.join(name);
        let path_s = path.to_str().unwrap();
        run("truncate", &["-s", size, path_s]);
        let mut all = args.to_vec();
        all.push(path_s);
        run(cmd, &all);
        path
    }

    /// A 64 MiB ext4 with 4 KiB blocks: the end of its first page is unused.
    fn ext4_4k(dir: &Path) -> PathBuf {
        made(dir, "ext4", "64M", "mkfs.ext4", &["-q", "-F", "-b", "4096"])
    }

    /// The plan of an unpartitioned image file.
    fn plan_of(path: &Path) -> DiskPlan {
        let file = std::fs::File::open(path).unwrap();
        plan(&file, file.metadata().unwrap().len())
    }

    /// (content, handling, reason) of the only partition.
    fn verdict(plan: &DiskPlan) -> (String, String, String) {
        let p = &plan.partitions[0];
        (
            p.content.clone(),
            p.handling.clone(),
            p.reason.clone().unwrap_or_default(),
        )
    }

    #[test]
    fn mkswap_area_is_header_only() {
        let dir = tempfile::tempdir().unwrap();
        let swap = made(dir.path(), "swap", "32M", "mkswap", &["-q", "-L", "s0"]);
        let plan = plan_of(&swap);
        assert_eq!(
            verdict(&plan),
            ("swap".into(), HEADER_ONLY.into(), String::new())
        );
        assert_eq!(plan.partitions[0].bytes_to_read, 4096);
        // Big-endian headers (written on another architecture) are read as the kernel does.
        let mut header = std::fs::read(&swap).unwrap()[1024..1036].to_vec();
        for field in header.chunks_mut(4) {
            field.reverse();
        }
        poke(&swap, 1024, &header);
        assert_eq!(verdict(&plan_of(&swap)).1, HEADER_ONLY);
    }

    #[test]
    fn swap_unlike_what_mkswap_writes_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        // A swap area smaller than its partition: what lies past it is not swap.
        let short = made(dir.path(), "short", "32M", "mkswap", &["-q"]);
        run("truncate", &["-s", "48M", short.to_str().unwrap()]);
        let (content, handling, reason) = verdict(&plan_of(&short));
        assert_eq!((content.as_str(), handling.as_str()), ("swap", WHOLE));
        assert!(
            reason.contains("last page 8191") && reason.contains("12288 pages"),
            "{reason}"
        );
        // No UUID.
        let swap = made(dir.path(), "swap", "32M", "mkswap", &["-q"]);
        poke(&swap, 1036, &[0; 16]);
        let (_, handling, reason) = verdict(&plan_of(&swap));
        assert_eq!(handling, WHOLE);
        assert!(reason.contains("UUID"), "{reason}");
        // Hibernation image.
        let swap = made(dir.path(), "hib", "32M", "mkswap", &["-q"]);
        poke(&swap, 4086, b"S1SUSPEND\0");
        let (_, handling, reason) = verdict(&plan_of(&swap));
        assert_eq!(handling, WHOLE);
        assert!(reason.contains("hibernation"), "{reason}");
        // A version blkid does not accept: the signature is not swap at all.
        let swap = made(dir.path(), "v2", "32M", "mkswap", &["-q"]);
        poke(&swap, 1024, &2u32.to_le_bytes());
        assert_eq!(
            verdict(&plan_of(&swap)),
            (
                "unknown".into(),
                WHOLE.into(),
                "no partition table and no known filesystem".into()
            )
        );
    }

    #[test]
    fn stray_swap_signature_in_ext4_never_makes_it_swap() {
        let dir = tempfile::tempdir().unwrap();
        // The common case: the superblock at 1024 is no swap header, the
        // signature is stray bytes and the ext4 is planned as usual.
        let ext4 = ext4_4k(dir.path());
        let clean = verdict(&plan_of(&ext4));
        poke(&ext4, 4086, b"SWAPSPACE2");
        assert_eq!(verdict(&plan_of(&ext4)), clean);
        assert_eq!(clean, ("ext4".into(), ALLOCATED_ONLY.into(), String::new()));
        // 16 Mi inodes (a 64 GiB ext4 with -T news, or this) read as a
        // big-endian swap version 1 with a last page: blkid finds both
        // signatures and calls it ambivalent; so does the planner.
        let ext4 = made(
            dir.path(),
            "inodes",
            "16G",
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-m",
                "0",
                "-N",
                "16777216",
                "-E",
                "nodiscard,lazy_itable_init=1",
            ],
        );
        assert_eq!(verdict(&plan_of(&ext4)).1, ALLOCATED_ONLY);
        poke(&ext4, 4086, b"SWAPSPACE2");
        let plan = plan_of(&ext4);
        let (content, handling, reason) = verdict(&plan);
        assert_eq!((content.as_str(), handling.as_str()), ("ambiguous", WHOLE));
        assert!(reason.contains("swap and ext4"), "{reason}");
        assert_eq!(plan.ranges, vec![0..16 << 30]);
    }

    #[test]
    fn two_signatures_of_any_kind_are_ambiguous() {
        let dir = tempfile::tempdir().unwrap();
        let ext4 = ext4_4k(dir.path());
        // A stale btrfs superblock magic in a block ext4 keeps unused.
        poke(&ext4, 0x10040, b"_BHRfS_M");
        let (content, handling, reason) = verdict(&plan_of(&ext4));
        assert_eq!((content.as_str(), handling.as_str()), ("ambiguous", WHOLE));
        assert!(reason.contains("ext4 and btrfs"), "{reason}");
        // A real swap area with an LVM label beside it.
        let swap = made(dir.path(), "swap", "32M", "mkswap", &["-q"]);
        poke(&swap, 0x200, b"LABELONE");
        let (content, _, reason) = verdict(&plan_of(&swap));
        assert_eq!(content, "ambiguous");
        assert!(reason.contains("swap and LVM2_member"), "{reason}");
    }
}
