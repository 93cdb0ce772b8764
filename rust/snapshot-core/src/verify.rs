//! Checking an image someone was given: its digests against what its
//! capture reported, and (for qcow2) its structure.
//!
//! The image is streamed once, in large sequential reads, through the three
//! digest threads the capture uses; the qcow2 check then reads only the
//! metadata (a few MiB even for a large image) at its offsets: positioned
//! reads of a file, or ranged GETs of a Glance image. Findings are not errors: [`Verification::ok`] says whether
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

/// Verifies the image file at `path` against each of `expected`.
pub fn verify_file(path: &Path, expected: &[Expected]) -> Result<Verification> {
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
    verify_image(&file, &file, &path.display().to_string(), expected)
}

/// Verifies the image read once from `stream`, whose metadata `at` reads
/// at offsets (the same file, or ranged reads of the same download),
/// against each of `expected`. `what` names the image in errors.
pub fn verify_image<R: Read, A: qcow2_check::ReadAt + ?Sized>(
    stream: R,
    at: &A,
    what: &str,
    expected: &[Expected],
) -> Result<Verification> {
    let (digests, size) = digest_stream(stream, what)?;
    tracing::info!(image = %what, size, sha256 = %digests.sha256, "Digested the image");

    let mut magic = [0u8; 4];
    let is_qcow2 = size >= 4
        && at.read_exact_at(&mut magic, 0).is_ok()
        && u32::from_be_bytes(magic) == qcow2_check::MAGIC;
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let (format, virtual_size) = if is_qcow2 {
        let summary = qcow2_check::check(at, size);
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
    for expected in expected {
        compare(
            expected,
            &digests,
            size,
            format,
            virtual_size,
            is_qcow2,
            &mut errors,
        );
    }
    for error in &errors {
        tracing::debug!(image = %what, "{error}");
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

/// What a Glance image record promises: Glance's own `size`, `checksum`,
/// `os_hash_value`, `disk_format` and `virtual_size`, and the `snapshot_*`
/// properties the service step wrote. Also returns the disagreements among
/// these values found without reading the data (a property edited after
/// the snapshot shows up here, against the provenance record (see
/// [`crate::provenance`]) or against the data).
pub fn glance_expectations(record: &serde_json::Value) -> (Vec<Expected>, Vec<String>) {
    let text = |key: &str| record.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let number = |key: &str| record.get(key).and_then(serde_json::Value::as_u64);
    let property_number = |key: &str| -> std::result::Result<Option<u64>, String> {
        match text(key) {
            None => Ok(None),
            Some(value) => value
                .parse()
                .map(Some)
                .map_err(|_| format!("Property {key} is {value:?}, not a number of bytes")),
        }
    };
    let format_of = |value: Option<String>| match value.as_deref() {
        Some("qcow2") => Some(Format::Qcow2),
        Some("raw") => Some(Format::Raw),
        _ => None,
    };
    let mut problems = Vec::new();
    let algo = text("os_hash_algo").unwrap_or_default();
    let hash = text("os_hash_value");
    let glance = Expected {
        md5: text("checksum"),
        sha512: hash.clone().filter(|_| algo == "sha512"),
        sha256: hash.filter(|_| algo == "sha256"),
        image_size: number("size"),
        virtual_size: number("virtual_size"),
        format: format_of(text("disk_format")),
        origin: "Glance".into(),
    };
    let mut ours = Expected {
        sha256: text("snapshot_sha256"),
        sha512: text("snapshot_sha512"),
        md5: text("snapshot_md5"),
        format: format_of(text("snapshot_format")),
        origin: "the snapshot_* properties".into(),
        ..Expected::default()
    };
    let mut sizes = |key: &str| match property_number(key) {
        Ok(value) => value,
        Err(problem) => {
            problems.push(problem);
            None
        }
    };
    ours.image_size = sizes("snapshot_image_size");
    ours.virtual_size = sizes("snapshot_virtual_size");
    let bytes_read = sizes("snapshot_bytes_read");
    let snapshot = record
        .as_object()
        .is_some_and(|o| o.keys().any(|k| k.starts_with("snapshot_sha")));
    if snapshot {
        if let (Some(read), Some(virtual_size)) = (bytes_read, ours.virtual_size) {
            // Each pass reads the disk at most once; there are at most two.
            if read > 2 * virtual_size {
                problems.push(format!(
                    "Property snapshot_bytes_read ({read}) is more than two passes over the {virtual_size}-byte disk"
                ));
            }
        }
        match text("snapshot_tool_version") {
            None => problems.push("Property snapshot_tool_version is missing".into()),
            Some(version) if !is_version(&version) => problems.push(format!(
                "Property snapshot_tool_version is {version:?}, not a version number"
            )),
            Some(_) => {}
        }
        if ours.sha256.is_none() || ours.sha512.is_none() || ours.md5.is_none() {
            problems.push(
                "Some of the snapshot_sha256, snapshot_sha512 and snapshot_md5 properties are missing"
                    .into(),
            );
        }
    }
    // Every snapshot_* property against the record of them all.
    problems.extend(crate::provenance::check(record));
    (vec![glance, ours], problems)
}

/// `1.2.3`, optionally with a pre-release or build suffix.
fn is_version(text: &str) -> bool {
    let core = text.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
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
                    "{name} of the image is {got}, expected {want} from {origin}: the image was changed or damaged"
                ));
            }
        }
    }
    if let Some(want) = expected.image_size {
        if want != size {
            errors.push(format!(
                "The image is {size} bytes, expected {want} from {origin}: it was truncated or changed"
            ));
        }
    }
    if let Some(want) = expected.format {
        if want != format {
            errors.push(format!(
                "The image is {}, expected {} from {origin}",
                format_name(format),
                format_name(want)
            ));
        }
    }
    if let Some(want) = expected.virtual_size {
        // A raw image's disk size is its file size, compared above.
        if header_read && want != virtual_size {
            errors.push(format!(
                "The image's disk is {virtual_size} bytes, expected {want} from {origin}"
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
    fn glance_record_expectations() {
        let record = serde_json::json!({
            "size": 10, "checksum": "aa", "os_hash_algo": "sha512", "os_hash_value": "bb",
            "disk_format": "qcow2", "virtual_size": null,
            "snapshot_sha256": "cc", "snapshot_sha512": "bb", "snapshot_md5": "aa",
            "snapshot_image_size": "10", "snapshot_virtual_size": "100",
            "snapshot_bytes_read": "300", "snapshot_tool_version": "x1",
        });
        let (expected, problems) = glance_expectations(&record);
        assert_eq!(expected[0].sha512.as_deref(), Some("bb"));
        assert_eq!(expected[0].sha256, None);
        assert_eq!(expected[0].virtual_size, None);
        assert_eq!(expected[1].image_size, Some(10));
        assert_eq!(expected[1].virtual_size, Some(100));
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("snapshot_bytes_read (300)"));
        assert!(problems[1].contains("\"x1\", not a version"));
        assert!(problems[2].contains("no provenance record"));
        assert!(is_version("0.1.0") && is_version("1.2.3-rc1") && !is_version("1.2"));
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
        assert!(
            errors[0].starts_with("SHA-512 of the image is bd, expected bb from the report r.json")
        );

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
