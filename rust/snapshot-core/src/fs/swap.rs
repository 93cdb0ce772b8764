//! Linux swap areas: only the header page is kept (label, UUID, signature),
//! so the image holds a fresh swap area and never swapped-out memory.
//!
//! A swap area holding a hibernation image is read whole: the image is
//! what the next boot resumes from.

use super::field::{be32, le32};
use super::{Allocation, HEADER_ONLY, Probe, Slice};

/// Page sizes Linux runs with; the signature sits in the last 10 bytes of the first page.
const PAGE_SIZES: [u64; 4] = [4096, 8192, 16384, 65536];
/// Signatures written over `SWAPSPACE2` while a hibernation image is stored.
const HIBERNATION: [&[u8]; 4] = [b"S1SUSPEND", b"S2SUSPEND", b"ULSUSPEND", b"LINHIB0001"];

/// Recognises a swap area and plans its header page.
pub(crate) fn probe(slice: &Slice<'_>) -> Option<Probe> {
    for page in PAGE_SIZES {
        let Ok(tail) = slice.read(page - 10, 10) else {
            break;
        };
        if HIBERNATION.iter().any(|sig| tail.starts_with(sig)) {
            return Some(Probe {
                content: "swap".into(),
                result: Err("swap holds a hibernation image".into()),
            });
        }
        if tail != b"SWAPSPACE2" {
            continue;
        }
        let result = slice.read(1024, 12).and_then(|h| {
            // version (1), last_page, nr_badpages in the kernel's byte order.
            let (version, last_page, bad) = match le32(&h, 0)? {
                1 => (1, le32(&h, 4)?, le32(&h, 8)?),
                _ => (be32(&h, 0)?, be32(&h, 4)?, be32(&h, 8)?),
            };
            if version != 1 {
                return Err(format!("swap header version {version} is not 1"));
            }
            if u64::from(last_page) >= slice.size() / page || bad > 637 {
                return Err("swap header does not fit the partition".into());
            }
            Ok(Allocation {
                ranges: vec![0..page],
                bytes_used: None,
                handling: HEADER_ONLY,
            })
        });
        return Some(Probe {
            content: "swap".into(),
            result,
        });
    }
    None
}
