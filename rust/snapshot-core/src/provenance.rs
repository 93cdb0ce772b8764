//! The provenance record of a snapshot: one canonical JSON object holding
//! every `snapshot_*` image property, stored in Glance beside them and
//! sealed by its own SHA-256.
//!
//! Every writer of the properties (the service step, the CLI's Glance
//! upload) gets them from [`properties`], so they and the record cannot
//! drift apart. [`check`] is the reader's side: `verify` reports each
//! property that differs from the record, is missing from it or was added,
//! and a record whose parts no longer hash to
//! [`SHA256_PROPERTY`]. That catches an edit of any one property, or of
//! the record, by hand or by a tool; it is not a signature: whoever can edit
//! the image can rewrite the record and its digest together, and only the
//! digests of the data, compared with the data itself, stay beyond reach.
//!
//! Nova copies image properties into an instance's system metadata, whose
//! values are cut at 255 characters (Glance 33 itself stores longer values),
//! so the record, about 600 characters, is split into parts of at most
//! [`MAX_VALUE`] characters: `snapshot_provenance_1`, `_2`, ...

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// Prefix of every property the snapshot writes.
pub const PREFIX: &str = "snapshot_";

/// Prefix of the record's parts, numbered from 1.
pub const PART_PREFIX: &str = "snapshot_provenance_";

/// The property holding the SHA-256 (lowercase hex) of the record: its
/// parts concatenated in order.
pub const SHA256_PROPERTY: &str = "snapshot_provenance_sha256";

/// Longest value written, in characters.
pub const MAX_VALUE: usize = 255;

/// What the capture report does not know: where the disk came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    /// Ironic node UUID, when captured by the service step.
    pub node: Option<String>,
    /// The device read, such as `/dev/sda`.
    pub device: Option<String>,
    /// The image the node was deployed from (its `instance_info/image_source`).
    pub parent_image: Option<String>,
}

/// The `snapshot_*` properties of a capture: the report's sizes, digests,
/// format and tool version, `source`, the time (`snapshot_captured_at`,
/// UTC), and the record of all of them with its SHA-256.
///
/// `report` is a capture report as JSON (the CLI's `--json` object, or the
/// dict the Python binding returns); fields missing from it are left out.
pub fn properties(report: &serde_json::Value, source: &Source) -> BTreeMap<String, String> {
    properties_at(report, source, SystemTime::now())
}

/// [`properties`] at a given time (tests).
pub fn properties_at(
    report: &serde_json::Value,
    source: &Source,
    now: SystemTime,
) -> BTreeMap<String, String> {
    let mut values = BTreeMap::new();
    let fields = [
        "sha256",
        "sha512",
        "md5",
        "virtual_size",
        "image_size",
        "bytes_read",
        "seconds",
        "format",
        "compression",
        "cluster_size",
        "tool_version",
    ];
    for field in fields {
        let value = match report.get(field) {
            Some(serde_json::Value::String(text)) => text.clone(),
            // Three decimals: the property says how long, not a float's noise.
            Some(serde_json::Value::Number(n)) if field == "seconds" => {
                format!("{:.3}", n.as_f64().unwrap_or_default())
            }
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => continue,
        };
        values.insert(format!("{PREFIX}{field}"), value);
    }
    let context = [
        ("node", &source.node),
        ("device", &source.device),
        ("source_image", &source.parent_image),
    ];
    for (name, value) in context {
        if let Some(value) = value {
            values.insert(format!("{PREFIX}{name}"), value.clone());
        }
    }
    values.insert(format!("{PREFIX}captured_at"), rfc3339(now));
    seal(values)
}

/// Adds the record of `values` (its parts and its SHA-256) to them.
fn seal(mut values: BTreeMap<String, String>) -> BTreeMap<String, String> {
    let record = canonical(&values);
    let digest = hex::encode(Sha256::digest(record.as_bytes()));
    for (index, part) in split(&record).into_iter().enumerate() {
        values.insert(format!("{PART_PREFIX}{}", index + 1), part);
    }
    values.insert(SHA256_PROPERTY.to_owned(), digest);
    values
}

/// Compact JSON with sorted keys: the same values give the same bytes.
fn canonical(values: &BTreeMap<String, String>) -> String {
    // serde_json's map is ordered by key (no preserve_order feature) and
    // its compact writer adds no whitespace.
    serde_json::to_string(values).unwrap_or_default()
}

/// `text` in pieces of at most [`MAX_VALUE`] characters.
fn split(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(MAX_VALUE)
        .map(|piece| piece.iter().collect())
        .collect()
}

/// Whether `key` is one of the record's own properties (a part or the digest).
fn is_record_key(key: &str) -> bool {
    key == SHA256_PROPERTY
        || key
            .strip_prefix(PART_PREFIX)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// What is wrong with the provenance of a Glance image record, one
/// sentence each: empty when the image has no `snapshot_*` property at all
/// (not a snapshot) or when every property agrees with an intact record.
pub fn check(image: &serde_json::Value) -> Vec<String> {
    let Some(object) = image.as_object() else {
        return Vec::new();
    };
    let snapshot: BTreeMap<&str, Option<&str>> = object
        .iter()
        .filter(|(key, _)| key.starts_with(PREFIX))
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    if snapshot.is_empty() {
        return Vec::new();
    }
    let Some(sealed) = snapshot.get(SHA256_PROPERTY).copied().flatten() else {
        return vec![format!(
            "The image has snapshot_* properties but no provenance record ({SHA256_PROPERTY} is missing): they cannot be checked against each other"
        )];
    };
    let mut parts = Vec::new();
    while let Some(part) = snapshot
        .get(format!("{PART_PREFIX}{}", parts.len() + 1).as_str())
        .copied()
        .flatten()
    {
        parts.push(part);
    }
    let numbered = snapshot
        .keys()
        .filter(|k| is_record_key(k) && **k != SHA256_PROPERTY)
        .count();
    if parts.is_empty() || numbered != parts.len() {
        return vec![format!(
            "The provenance record is incomplete: {} of its parts {PART_PREFIX}1.. are in sequence, {numbered} present",
            parts.len()
        )];
    }
    let record: String = parts.concat();
    let digest = hex::encode(Sha256::digest(record.as_bytes()));
    if !digest.eq_ignore_ascii_case(sealed) {
        return vec![format!(
            "The provenance record was edited: its SHA-256 is {digest}, property {SHA256_PROPERTY} says {sealed}"
        )];
    }
    let recorded: BTreeMap<String, String> = match serde_json::from_str(&record) {
        Ok(values) => values,
        Err(err) => {
            return vec![format!(
                "The provenance record is not a JSON object of strings: {err}"
            )];
        }
    };
    let mut problems = Vec::new();
    for (key, value) in &snapshot {
        if is_record_key(key) {
            continue;
        }
        match (recorded.get(*key), value) {
            (Some(want), Some(got)) if want == got => {}
            (Some(want), got) => problems.push(format!(
                "Property {key} is {}, the provenance record says {want:?}: it was edited after the snapshot",
                got.map_or_else(|| "not a string".to_owned(), |g| format!("{g:?}"))
            )),
            (None, _) => problems.push(format!(
                "Property {key} is not in the provenance record: it was added after the snapshot"
            )),
        }
    }
    for key in recorded.keys() {
        if !snapshot.contains_key(key.as_str()) {
            problems.push(format!(
                "Property {key} of the provenance record is missing from the image: it was removed after the snapshot"
            ));
        }
    }
    problems
}

/// `YYYY-MM-DDTHH:MM:SSZ` of `time` (UTC).
fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn report() -> serde_json::Value {
        serde_json::json!({
            "sha256": "a".repeat(64), "sha512": "b".repeat(128), "md5": "c".repeat(32),
            "virtual_size": 1_073_741_824u64, "image_size": 123_456_789u64,
            "bytes_read": 200_000_000u64, "seconds": 12.345_678, "format": "qcow2",
            "compression": "zstd", "cluster_size": 65536, "tool_version": "0.1.0",
            "passes": 1, "partitions": [],
        })
    }

    fn image() -> serde_json::Value {
        let source = Source {
            node: Some("0b7f7cde-0000-4000-8000-00000000abcd".into()),
            device: Some("/dev/sda".into()),
            parent_image: Some("1c8f8def-0000-4000-8000-00000000abcd".into()),
        };
        let props = properties_at(
            &report(),
            &source,
            UNIX_EPOCH + Duration::from_secs(1_795_000_000),
        );
        let mut image = serde_json::json!({"id": "x", "size": 123_456_789u64});
        for (key, value) in props {
            image[key] = value.into();
        }
        image
    }

    #[test]
    fn record_holds_every_property_in_short_parts() {
        let image = image();
        assert_eq!(image["snapshot_seconds"], "12.346");
        assert_eq!(image["snapshot_captured_at"], "2026-11-18T11:06:40Z");
        assert_eq!(
            image["snapshot_node"],
            "0b7f7cde-0000-4000-8000-00000000abcd"
        );
        let parts: Vec<&str> = (1..)
            .map_while(|n| image[format!("snapshot_provenance_{n}")].as_str())
            .collect();
        assert!(parts.len() >= 3, "{parts:?}");
        assert!(parts.iter().all(|p| p.chars().count() <= MAX_VALUE));
        let record: BTreeMap<String, String> = serde_json::from_str(&parts.concat()).unwrap();
        assert_eq!(record.len(), 15);
        assert_eq!(
            record["snapshot_source_image"],
            "1c8f8def-0000-4000-8000-00000000abcd"
        );
        assert!(check(&image).is_empty(), "{:?}", check(&image));
        // Not a snapshot at all: nothing to say.
        assert!(check(&serde_json::json!({"id": "x", "os_distro": "debian"})).is_empty());
    }

    #[test]
    fn every_edit_is_found() {
        let mut edited = image();
        edited["snapshot_node"] = "someone-else".into();
        let problems = check(&edited);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with(
                "Property snapshot_node is \"someone-else\", the provenance record says"
            )
        );

        let mut added = image();
        added["snapshot_note"] = "hi".into();
        assert!(check(&added)[0].contains("snapshot_note is not in the provenance record"));

        let mut removed = image();
        removed.as_object_mut().unwrap().remove("snapshot_device");
        assert!(check(&removed)[0].contains("snapshot_device of the provenance record is missing"));

        let mut record = image();
        let part = record["snapshot_provenance_1"]
            .as_str()
            .unwrap()
            .replacen("qcow2", "raw", 1);
        record["snapshot_provenance_1"] = part.into();
        assert!(check(&record)[0].starts_with("The provenance record was edited"));

        let mut gone = image();
        gone.as_object_mut()
            .unwrap()
            .remove("snapshot_provenance_2");
        assert!(check(&gone)[0].starts_with("The provenance record is incomplete"));

        let mut unsealed = image();
        unsealed.as_object_mut().unwrap().remove(SHA256_PROPERTY);
        assert!(check(&unsealed)[0].contains("no provenance record"));
    }
}
