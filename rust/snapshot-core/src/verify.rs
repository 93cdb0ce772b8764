//! Checking an image someone was given: its digests against what its
//! capture reported, and (for qcow2) its structure.
//!
//! The image is streamed once, in large sequential reads, through the three
//! digest threads the capture uses; the qcow2 check then reads only the
//! metadata (a few MiB even for a large image) at its offsets, so it needs a
//! seekable file. Findings are not errors: [`Verification::ok`] says whether
//! the image passed, and [`Error`] is kept for inputs that cannot be read.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use crate::digest::{Digester, Digests, Piece, Recycler};
use crate::error::{Error, Result};
use crate::options::Format;
use crate::qcow2_check::{self, Severity};

/// Bytes per read of the streaming pass.
const CHUNK: usize = 4 * 1024 * 1024;

/// What the image should be: from the user's flags or a capture report.
/// Each `None` is not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// SHA-256, hex (any case).
    pub sha256: Option<String>,
    /// SHA-512, hex (Glance `os_hash_value`).
    pub sha512: Option<String>,
    /// MD5, hex (Glance `checksum`).
    pub md5: Option<String>,
    /// Size of the image file in bytes.
    pub image_size: Option<u64>,
    /// Size of the disk a guest sees, in bytes.
    pub virtual_size: Option<u64>,
    /// Image format.
    pub format: Option<Format>,
    /// Where these values came from, for messages (`the report`, `--sha256`).
    pub origin: String,
}

impl Expected {
    /// The values of a capture report (the CLI's `--json`/`--report` object).
    /// `path` names the report in errors.
    pub fn from_report_json(text: &str, path: &Path) -> Result<Expected> {
        let invalid = |reason: String| Error::ReportInvalid {
            path: path.to_owned(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|err| invalid(format!("Not JSON: {err}")))?;
        let object = value
            .as_object()
            .ok_or_else(|| invalid("Not a JSON object".into()))?;
        let text_field = |name: &str| -> Result<String> {
            object
                .get(name)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .ok_or_else(|| invalid(format!("No string field {name:?}")))
        };
        let number_field = |name: &str| -> Result<u64> {
            object
                .get(name)
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| invalid(format!("No number field {name:?}")))
        };
        let format = match text_field("format")?.as_str() {
            "qcow2" => Format::Qcow2,
            "raw" => Format::Raw,
            other => return Err(invalid(format!("Unknown format {other:?}"))),
        };
        Ok(Expected {
            sha256: Some(text_field("sha256")?),
            sha512: Some(text_field("sha512")?),
            md5: Some(text_field("md5")?),
            image_size: Some(number_field("image_size")?),
            virtual_size: Some(number_field("virtual_size")?),
            format: Some(format),
            origin: format!("the report {}", path.display()),
        })
    }
}

/// The outcome of a verification. Serialised as the CLI's `verify --json`
/// object; field names are part of the interface.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Verification {
    /// True when no error was found (warnings allowed).
    pub ok: bool,
    /// Format found: qcow2 by its magic, else raw.
    pub format: Format,
    /// Bytes of the image.
    pub image_size: u64,
    /// Disk size a guest sees (the image size for raw).
    pub virtual_size: u64,
    /// SHA-256 of the image bytes, lowercase hex.
    pub sha256: String,
    /// SHA-512 of the image bytes, lowercase hex.
    pub sha512: String,
    /// MD5 of the image bytes, lowercase hex.
    pub md5: String,
    /// What makes the image fail, one sentence each.
    pub errors: Vec<String>,
    /// What is odd but harmless (leaked clusters).
    pub warnings: Vec<String>,
}

/// Streams `reader` to its end once and returns its digests and length.
/// `what` names the input in errors.
pub fn digest_stream<R: Read>(mut reader: R, what: &str) -> Result<(Digests, u64)> {
    let mut digester = Digester::new()?;
    let mut recycler = Recycler::default();
    let mut total = 0u64;
    loop {
        let mut buf = recycler.take(CHUNK);
        buf.resize(CHUNK, 0);
        let mut len = 0;
        // Fill the whole chunk: HTTP bodies and pipes give short reads.
        while len < CHUNK {
            match reader.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Error::ImageRead {
                        what: what.to_owned(),
                        offset: total + len as u64,
                        source,
                    });
                }
            }
        }
        if len == 0 {
            break;
        }
        total += len as u64;
        let buf = Arc::new(buf);
        recycler.keep(Arc::clone(&buf));
        digester.update(Piece::new(buf, len))?;
        if len < CHUNK {
            break;
        }
    }
    Ok((digester.finish()?, total))
}

/// Verifies the image file at `path` against `expected`.
pub fn verify_file(path: &Path, expected: &Expected) -> Result<Verification> {
    let open_error = |source: std::io::Error| Error::ImageOpen {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(open_error)?;
    let meta = file.metadata().map_err(open_error)?;
    if !meta.is_file() {
        return Err(Error::ImageNotAFile {
            path: path.to_owned(),
        });
    }
    let what = path.display().to_string();
    let (digests, size) = digest_stream(&file, &what)?;
    tracing::info!(path = %what, size, sha256 = %digests.sha256, "Digested the image");

    let mut magic = [0u8; 4];
    let is_qcow2 = size >= 4
        && qcow2_check::ReadAt::read_exact_at(&file, &mut magic, 0).is_ok()
        && u32::from_be_bytes(magic) == qcow2_check::MAGIC;
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let (format, virtual_size) = if is_qcow2 {
        let summary = qcow2_check::check(&file, size);
        for finding in summary.findings {
            match finding.severity {
                Severity::Error => errors.push(finding.message),
                Severity::Warning => warnings.push(finding.message),
            }
        }
        (Format::Qcow2, summary.virtual_size)
    } else {
        (Format::Raw, size)
    };
    compare(
        expected,
        &digests,
        size,
        format,
        virtual_size,
        is_qcow2,
        &mut errors,
    );
    for error in &errors {
        tracing::debug!(path = %what, "{error}");
    }
    Ok(Verification {
        ok: errors.is_empty(),
        format,
        image_size: size,
        virtual_size,
        sha256: digests.sha256,
        sha512: digests.sha512,
        md5: digests.md5,
        errors,
        warnings,
    })
}

/// Appends a message for each value that differs from `expected`.
fn compare(
    expected: &Expected,
    digests: &Digests,
    size: u64,
    format: Format,
    virtual_size: u64,
    header_read: bool,
    errors: &mut Vec<String>,
) {
    let origin = &expected.origin;
    let digest_pairs = [
        ("SHA-256", &expected.sha256, &digests.sha256),
        ("SHA-512", &expected.sha512, &digests.sha512),
        ("MD5", &expected.md5, &digests.md5),
    ];
    for (name, want, got) in digest_pairs {
        if let Some(want) = want {
            if !want.eq_ignore_ascii_case(got) {
                errors.push(format!(
                    "{name} of the image is {got}, {origin} says {want}: the image was changed or damaged"
                ));
            }
        }
    }
    if let Some(want) = expected.image_size {
        if want != size {
            errors.push(format!(
                "The image is {size} bytes, {origin} says {want}: it was truncated or changed"
            ));
        }
    }
    if let Some(want) = expected.format {
        if want != format {
            errors.push(format!(
                "The image is {}, {origin} says {}",
                format_name(format),
                format_name(want)
            ));
        }
    }
    if let Some(want) = expected.virtual_size {
        // A raw image's disk size is its file size, compared above.
        if header_read && want != virtual_size {
            errors.push(format!(
                "The image's disk is {virtual_size} bytes, {origin} says {want}"
            ));
        }
    }
}

fn format_name(format: Format) -> &'static str {
    match format {
        Format::Qcow2 => "qcow2",
        Format::Raw => "raw",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_stream_of_short_reads() {
        // A reader that gives one byte per read, like a slow HTTP body.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() || buf.is_empty() {
                    return Ok(0);
                }
                buf[0] = self.0[0];
                self.0 = &self.0[1..];
                Ok(1)
            }
        }
        let (digests, size) = digest_stream(Trickle(b"abc"), "test").unwrap();
        assert_eq!(size, 3);
        assert_eq!(digests.md5, "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn report_json_and_comparison() {
        let path = Path::new("r.json");
        let text = r#"{"sha256":"AA","sha512":"bb","md5":"cc","image_size":3,"virtual_size":3,"format":"raw"}"#;
        let expected = Expected::from_report_json(text, path).unwrap();
        let digests = Digests {
            md5: "cc".into(),
            sha256: "aa".into(),
            sha512: "bd".into(),
        };
        let mut errors = Vec::new();
        compare(&expected, &digests, 3, Format::Raw, 3, false, &mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("SHA-512 of the image is bd, the report r.json says bb"));

        let mut errors = Vec::new();
        compare(&expected, &digests, 4, Format::Qcow2, 9, true, &mut errors);
        assert_eq!(errors.len(), 4, "{errors:?}");

        assert!(matches!(
            Expected::from_report_json("{}", path),
            Err(Error::ReportInvalid { .. })
        ));
        assert!(Expected::from_report_json("[", path).is_err());
    }
}
