//! The outcome of the ramdisk's work, handed back to the returning system.
//!
//! Nothing the ramdisk knows survives the jump back in memory: the returning
//! kernel starts afresh. The record travels in an EFI variable
//! ([`EFI_VARIABLE`], non-volatile, boot and runtime access), which the
//! firmware keeps across the kexec and which the returning system reads
//! under `/sys/firmware/efi/efivars` (`kexec-capture --status`). The disk
//! being captured is never written, so it cannot carry the record. Where
//! the output is a file, the record is also written beside it
//! (`OUT.kexec.json`); without UEFI that file and the console lines are all
//! there is.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Name of the EFI variable (`Name-VendorGUID`, the GUID is this project's own).
pub const EFI_VARIABLE: &str = "IronicSnapshotKexec-6a0f1d3e-52c4-4e0b-9a7d-3c1f5e2b8d40";
/// Where efivarfs is mounted.
pub const EFIVARS: &str = "/sys/firmware/efi/efivars";
/// EFI_VARIABLE_NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS.
const ATTRIBUTES: u32 = 0x7;

/// What happened in the ramdisk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Whether the image was written (and, for Glance, verified).
    pub ok: bool,
    /// Where it ended: `done`, or the step that failed (`modules`,
    /// `network`, `disk`, `output`, `capture`, `timeout`).
    pub stage: String,
    /// What went wrong, one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Where the image went (`glance:ID` or the file's path on the running system).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The main numbers of the capture's report (sizes, sha256, seconds).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub report: BTreeMap<String, serde_json::Value>,
    /// Seconds of each part in the ramdisk (`kernel` is the ramdisk
    /// kernel's uptime when `/init` started).
    pub timings: BTreeMap<String, f64>,
    /// Version of the binary that wrote it.
    pub version: String,
}

impl Outcome {
    /// One line for the console and the status command.
    pub fn line(&self) -> String {
        if self.ok {
            format!(
                "capture succeeded: {} bytes of image to {} in {:.1} s (sha256 {})",
                self.report
                    .get("image_size")
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                self.target.as_deref().unwrap_or("?"),
                self.timings.get("capture").copied().unwrap_or_default(),
                self.report
                    .get("sha256")
                    .and_then(|v| v.as_str())
                    .unwrap_or("?"),
            )
        } else {
            format!(
                "capture FAILED at {}: {}",
                self.stage,
                self.error.as_deref().unwrap_or("no reason recorded")
            )
        }
    }

    /// The record as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

fn efi_path(dir: &Path) -> PathBuf {
    dir.join(EFI_VARIABLE)
}

/// Writes the record into the EFI variable under `dir` (efivarfs).
pub fn write_efi(dir: &Path, outcome: &Outcome) -> io::Result<()> {
    let path = efi_path(dir);
    // An old record is replaced: efivarfs appends on O_APPEND only, but a
    // variable of ours left by a run whose status was never read is removed
    // first so its attributes cannot differ.
    let _ = clear_efi(dir);
    let mut data = ATTRIBUTES.to_le_bytes().to_vec();
    data.extend(outcome.to_json());
    // efivarfs takes the attributes and the data in one write.
    std::fs::File::create(&path)?.write_all(&data)
}

/// Reads the record from the EFI variable under `dir`, if there is one.
pub fn read_efi(dir: &Path) -> io::Result<Option<Outcome>> {
    let data = match std::fs::read(efi_path(dir)) {
        Ok(data) => data,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let json = data.get(4..).unwrap_or_default();
    serde_json::from_slice(json)
        .map(Some)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
}

/// Removes the EFI variable under `dir` (efivarfs may mark it immutable:
/// that flag is cleared first). No variable is fine.
pub fn clear_efi(dir: &Path) -> io::Result<()> {
    let path = efi_path(dir);
    if let Ok(file) = std::fs::File::open(&path) {
        use std::os::fd::AsRawFd;
        const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
        const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
        const FS_IMMUTABLE_FL: libc::c_int = 0x10;
        let mut flags: libc::c_int = 0;
        // SAFETY: the flag ioctls take a pointer to an int.
        unsafe {
            if libc::ioctl(file.as_raw_fd(), FS_IOC_GETFLAGS, &mut flags) == 0
                && flags & FS_IMMUTABLE_FL != 0
            {
                flags &= !FS_IMMUTABLE_FL;
                libc::ioctl(file.as_raw_fd(), FS_IOC_SETFLAGS, &flags);
            }
        }
    }
    match std::fs::remove_file(&path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// Path of the record written beside an image file.
pub fn beside(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".kexec.json");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_through_a_variable_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_efi(dir.path()).unwrap(), None);
        let outcome = Outcome {
            ok: false,
            stage: "capture".into(),
            error: Some("Glance refused".into()),
            target: Some("glance:x".into()),
            report: BTreeMap::new(),
            timings: [("total".to_owned(), 12.5)].into(),
            version: "t".into(),
        };
        write_efi(dir.path(), &outcome).unwrap();
        let raw = std::fs::read(dir.path().join(EFI_VARIABLE)).unwrap();
        assert_eq!(&raw[..4], &[7, 0, 0, 0]);
        assert_eq!(read_efi(dir.path()).unwrap(), Some(outcome.clone()));
        assert_eq!(outcome.line(), "capture FAILED at capture: Glance refused");
        clear_efi(dir.path()).unwrap();
        clear_efi(dir.path()).unwrap();
        assert_eq!(read_efi(dir.path()).unwrap(), None);
        assert_eq!(
            beside(Path::new("/m/a.qcow2")),
            PathBuf::from("/m/a.qcow2.kexec.json")
        );
    }
}
