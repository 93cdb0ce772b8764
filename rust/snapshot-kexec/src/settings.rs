//! What the ramdisk is told: the way back and the work to do.
//!
//! The settings travel as `/settings.json` inside the initramfs, which lives
//! only in memory: a credential in them is never on a kernel command line
//! (readable by every user and logged) nor on any disk.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{KexecError, Result};
pub use crate::net::Network;

/// Path of the settings file inside the initramfs.
pub const SETTINGS_PATH: &str = "/settings.json";
/// Path of the original kernel image inside the initramfs.
pub const RETURN_KERNEL: &str = "/return/vmlinuz";
/// Path of the original initrd inside the initramfs.
pub const RETURN_INITRD: &str = "/return/initrd.img";
/// Folder of kernel modules inside the initramfs (files in load order).
pub const MODULES_DIR: &str = "/modules";
/// The CA bundle for the upload inside the initramfs.
pub const CA_FILE: &str = "/etc/ironic-snapshot-ca.pem";
/// Where the ramdisk mounts the output file's filesystem.
pub const OUTPUT_MOUNT: &str = "/mnt";

/// How the ramdisk ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Return {
    /// kexec back into the original kernel, initrd and command line.
    Kexec,
    /// Reboot through the firmware.
    Reboot,
    /// Power off.
    Poweroff,
}

/// Everything `/init` needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Version of the binary that wrote them (the same binary reads them).
    pub version: String,
    /// How to end.
    pub return_to: Return,
    /// The original kernel command line (`/proc/cmdline`), for the way back.
    pub cmdline: String,
    /// The original kernel release (`uname -r`), for the log.
    pub release: String,
    /// Whether an initrd was found for the way back (at [`RETURN_INITRD`]).
    pub has_initrd: bool,
    /// Module files under [`MODULES_DIR`], in load order.
    pub modules: Vec<String>,
    /// Seconds the ramdisk may take in all before it returns regardless.
    pub timeout_seconds: u64,
    /// Only jump there and back (a preview: nothing is captured).
    pub round_trip_only: bool,
    /// Kernel name of the disk to capture (`vda`), which the ramdisk waits for.
    #[serde(default)]
    pub source_device: Option<String>,
    /// The network to set up (for an upload).
    #[serde(default)]
    pub network: Option<Network>,
    /// An image file to write on another disk.
    #[serde(default)]
    pub output: Option<OutputFile>,
    /// A Glance image to fill.
    #[serde(default)]
    pub glance: Option<GlanceSettings>,
    /// How to capture.
    #[serde(default)]
    pub capture: CaptureSettings,
}

/// An image file on another disk than the source: the ramdisk mounts that
/// disk's filesystem and writes the file there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// Kernel name of the device holding the filesystem (`vdb`, `sdb1`).
    pub device: String,
    /// Its filesystem type, as `mount(2)` wants it (`ext4`).
    pub fstype: String,
    /// Path of the image inside that filesystem (`/images/node.qcow2`).
    pub path: String,
    /// The path on the running system, for the log and the record.
    pub shown_as: String,
    /// Overwrite an existing file.
    pub force: bool,
}

/// A secret string (a token) that `Debug` never shows; serialised as is,
/// because it must reach the ramdisk (inside the in-memory initramfs only).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretText(pub String);

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretText(***)")
    }
}

/// The Glance image to fill, resolved on the running system (Keystone is
/// asked there, so the ramdisk needs only the endpoint and a token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlanceSettings {
    /// Image service endpoint.
    pub endpoint: String,
    /// The queued image's id.
    pub image_id: String,
    /// Keystone token; `None` for a no-auth Glance.
    pub token: Option<SecretText>,
    /// Skip TLS verification (test clouds only).
    pub insecure: bool,
    /// Whether a CA bundle travels at [`CA_FILE`].
    pub has_ca_file: bool,
}

/// Capture options the ramdisk uses (the engine's defaults otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CaptureSettings {
    /// Memory limit for a forward-only upload; `None`: half the memory the
    /// ramdisk has available (it does nothing else).
    pub memory_limit: Option<u64>,
    /// Copy free space too.
    pub no_skip_free_space: bool,
}

impl Settings {
    /// Reads the settings at `path`.
    pub fn read(path: &Path) -> Result<Settings> {
        let text = std::fs::read_to_string(path).map_err(|err| KexecError::Settings {
            path: path.to_owned(),
            reason: format!("cannot read them ({err})"),
        })?;
        serde_json::from_str(&text).map_err(|err| KexecError::Settings {
            path: PathBuf::from(path),
            reason: err.to_string(),
        })
    }
}

/// The ramdisk kernel's command line: only the console settings of the
/// original one (so `/init` speaks where the user looks) and what makes a
/// failure end instead of hang. Never a credential.
pub fn ramdisk_cmdline(original: &str) -> String {
    let mut args: Vec<&str> = original
        .split_whitespace()
        .filter(|arg| arg.starts_with("console=") || arg.starts_with("earlycon") || *arg == "quiet")
        .collect();
    // A panic (an /init that dies) reboots after 10 s instead of hanging.
    args.push("panic=10");
    args.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_as_json() {
        let settings = Settings {
            version: "0.1.0".into(),
            return_to: Return::Kexec,
            cmdline: "root=LABEL=x ro".into(),
            release: "6.1.0-50-cloud-amd64".into(),
            has_initrd: true,
            modules: vec!["kernel/a.ko".into()],
            timeout_seconds: 600,
            round_trip_only: true,
            source_device: Some("vda".into()),
            network: None,
            output: None,
            glance: Some(GlanceSettings {
                endpoint: "http://10.0.2.2:9292".into(),
                image_id: "i".into(),
                token: Some(SecretText("tok".into())),
                insecure: false,
                has_ca_file: false,
            }),
            capture: CaptureSettings::default(),
        };
        assert!(!format!("{settings:?}").contains("tok\""));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(&path, serde_json::to_string(&settings).unwrap()).unwrap();
        assert_eq!(Settings::read(&path).unwrap(), settings);
        std::fs::write(&path, "{").unwrap();
        assert!(
            Settings::read(&path)
                .unwrap_err()
                .to_string()
                .contains("s.json")
        );
    }

    #[test]
    fn ramdisk_cmdline_keeps_only_the_console() {
        assert_eq!(
            ramdisk_cmdline(
                "BOOT_IMAGE=/vmlinuz root=LABEL=r ro console=tty0 console=ttyS0,115200 quiet"
            ),
            "console=tty0 console=ttyS0,115200 quiet panic=10"
        );
    }
}
