//! Human-readable sizes (`64K`, `8M`, `1G`) as the CLI and step arguments take them.

use crate::error::{Error, Result};

/// Parses a size such as `65536`, `64K`, `64KiB`, `8M` or `1G` into bytes.
///
/// Suffixes are binary (K = 1024). A missing suffix means bytes.
pub fn parse_size(text: &str) -> Result<u64> {
    let trimmed = text.trim();
    let invalid = || Error::InvalidSize {
        value: text.to_owned(),
    };
    let digits_end = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(invalid());
    }
    let number: u64 = digits.parse().map_err(|_| invalid())?;
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(invalid()),
    };
    number.checked_mul(1u64 << shift).ok_or_else(invalid)
}

/// Memory limit used when the memory the system has available cannot be
/// read (`auto` outside Linux, or without /proc).
const FALLBACK_MEMORY_LIMIT: u64 = 256 << 20;

/// Parses a memory limit: a size as [`parse_size`] takes it, or `auto` for
/// [`auto_memory_limit`].
pub fn parse_memory_limit(text: &str) -> Result<u64> {
    if text.trim().eq_ignore_ascii_case("auto") {
        Ok(auto_memory_limit())
    } else {
        parse_size(text)
    }
}

/// Half of the memory the kernel reports available right now
/// (`MemAvailable` in /proc/meminfo), or 256 MiB when that cannot be read.
///
/// Meant for a machine that does nothing else while it is captured, such as
/// a node in the agent ramdisk: an image that fits is spooled in memory and
/// the disk is read once, instead of twice past a small fixed limit. The
/// limit covers the image's metadata and the capture's buffers too, so the
/// other half stays for the rest of the system, and for the page cache that
/// reading the disk fills.
pub fn auto_memory_limit() -> u64 {
    match std::fs::read_to_string("/proc/meminfo")
        .ok()
        .as_deref()
        .and_then(mem_available)
    {
        Some(available) => available / 2,
        None => {
            tracing::warn!(
                "Cannot read MemAvailable from /proc/meminfo: memory limit auto falls back to 256 MiB"
            );
            FALLBACK_MEMORY_LIMIT
        }
    }
}

/// `MemAvailable` of a /proc/meminfo text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))?;
    let kib = line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    kib.checked_mul(1024)
}

/// Formats a byte count for people: `1.5 GiB`, `64 KiB`, `512 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_suffixes() {
        assert_eq!(parse_size("65536").unwrap(), 65536);
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
        assert_eq!(parse_size("8m").unwrap(), 8 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "K", "12Q", "-1", "1.5G", "99999999999999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn memory_limit_auto_is_half_of_available_memory() {
        let meminfo = "MemTotal:       24683528 kB\nMemFree:        12904704 kB\n\
                       MemAvailable:   23200000 kB\nBuffers:          123 kB\n";
        assert_eq!(mem_available(meminfo), Some(23_200_000 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: lots\n"), None);
        assert_eq!(parse_memory_limit("512M").unwrap(), 512 << 20);
        assert!(parse_memory_limit("half").is_err());
        // This machine has a /proc/meminfo: auto is half of what it says.
        let available = mem_available(&std::fs::read_to_string("/proc/meminfo").unwrap()).unwrap();
        let auto = parse_memory_limit(" AUTO ").unwrap();
        assert!(
            auto > 0 && auto <= available / 2 + (64 << 20),
            "{auto} vs {available}"
        );
    }

    #[test]
    fn formats() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(64 << 10), "64.0 KiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
    }
}
