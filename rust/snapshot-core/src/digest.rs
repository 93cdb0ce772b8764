//! Digests of the emitted image bytes.

/// Digests of an image's bytes as lowercase hex strings: SHA-256 for the
/// report, MD5 and SHA-512 because Glance reports them (`checksum`,
/// `os_hash_value`) and the upload is verified against them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Digests {
    /// MD5, lowercase hex (Glance `checksum`).
    pub md5: String,
    /// SHA-256, lowercase hex.
    pub sha256: String,
    /// SHA-512, lowercase hex (Glance `os_hash_value` with `os_hash_algo` sha512).
    pub sha512: String,
}
