//! The checksums filesystem metadata carries: CRC32C (ext4 `metadata_csum`,
//! XFS v5) and CRC16 (ext4 `uninit_bg`). GPT's CRC32 comes from `flate2`.
//!
//! Table-driven and small on purpose: plan() checksums a few kilobytes of
//! descriptors and bitmaps, so speed matters less than having no dependency.

/// Reflected CRC32C (Castagnoli) polynomial.
const CRC32C_POLY: u32 = 0x82F6_3B78;
/// Reflected CRC16 (ANSI, as Linux `crc16`) polynomial.
const CRC16_POLY: u16 = 0xA001;

/// The byte table of a reflected (LSB-first) CRC with polynomial `poly`.
/// One `u32` table serves both widths: a 16-bit polynomial keeps every
/// entry, and so every register value, below 2^16.
const fn reflected_table(poly: u32) -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ poly
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

static CRC32C: [u32; 256] = reflected_table(CRC32C_POLY);
static CRC16: [u32; 256] = reflected_table(CRC16_POLY as u32);

/// Continues a reflected CRC over `data` with `table`, no pre- or
/// post-inversion.
fn reflected_update(table: &[u32; 256], mut crc: u32, data: &[u8]) -> u32 {
    for &byte in data {
        crc = table[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// Continues a raw CRC32C over `data`, with no pre- or post-inversion (as
/// Linux `crc32c(seed, ...)`, which ext4 uses directly).
pub(crate) fn crc32c_update(crc: u32, data: &[u8]) -> u32 {
    reflected_update(&CRC32C, crc, data)
}

/// The standard CRC32C of `data` (inverted seed and result), as XFS stores it.
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    !crc32c_update(!0, data)
}

/// Continues a raw CRC16 (Linux `crc16`) over `data`.
pub(crate) fn crc16_update(crc: u16, data: &[u8]) -> u16 {
    // The register never leaves 16 bits (see `reflected_table`).
    reflected_update(&CRC16, u32::from(crc), data) as u16
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

    /// Bit by bit, the definition the tables stand for.
    fn bitwise(poly: u32, mut crc: u32, data: &[u8]) -> u32 {
        for &byte in data {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ poly
                } else {
                    crc >> 1
                };
            }
        }
        crc
    }

    #[test]
    fn tables_match_the_bitwise_definition_at_any_seed() {
        let data: Vec<u8> = (0u32..4096)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for seed in [0u32, 1, 0xFFFF, 0x1234] {
            let seed16 = seed as u16;
            assert_eq!(
                u32::from(crc16_update(seed16, &data)),
                bitwise(u32::from(CRC16_POLY), u32::from(seed16), &data)
            );
        }
        for seed in [0u32, !0, 0xDEAD_BEEF] {
            assert_eq!(
                crc32c_update(seed, &data),
                bitwise(CRC32C_POLY, seed, &data)
            );
            // Continuing over two parts is one pass over the whole.
            let (a, b) = data.split_at(1000);
            assert_eq!(
                crc32c_update(crc32c_update(seed, a), b),
                crc32c_update(seed, &data)
            );
        }
    }
}
