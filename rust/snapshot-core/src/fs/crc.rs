//! The checksums filesystem metadata carries: CRC32C (ext4 `metadata_csum`,
//! XFS v5) and CRC16 (ext4 `uninit_bg`). GPT's CRC32 comes from `flate2`.
//!
//! Table-driven and small on purpose: plan() checksums a few kilobytes of
//! descriptors and bitmaps, so speed matters less than having no dependency.

/// Reflected CRC32C (Castagnoli) polynomial.
const CRC32C_POLY: u32 = 0x82F6_3B78;
/// Reflected CRC16 (ANSI, as Linux `crc16`) polynomial.
const CRC16_POLY: u16 = 0xA001;

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ CRC32C_POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

const fn crc16_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u16;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ CRC16_POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static CRC32C: [u32; 256] = crc32c_table();
static CRC16: [u16; 256] = crc16_table();

/// Continues a raw CRC32C over `data`, with no pre- or post-inversion (as
/// Linux `crc32c(seed, ...)`, which ext4 uses directly).
pub(crate) fn crc32c_update(mut crc: u32, data: &[u8]) -> u32 {
    for &byte in data {
        crc = CRC32C[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// The standard CRC32C of `data` (inverted seed and result), as XFS stores it.
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    !crc32c_update(!0, data)
}

/// Continues a raw CRC16 (Linux `crc16`) over `data`.
pub(crate) fn crc16_update(mut crc: u16, data: &[u8]) -> u16 {
    for &byte in data {
        crc = CRC16[((crc ^ u16::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// The GPT checksum (CRC32, IEEE) of `data`.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(data);
    crc.sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_check_values() {
        // The catalogued check values of each CRC over "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        // CRC-16/ARC: init 0, reflected 0x8005.
        assert_eq!(crc16_update(0, b"123456789"), 0xBB3D);
    }
}
