//! Refuse before anything is touched when kexec cannot work here.
//!
//! Every check reads a file of the running system under [`System::root`]
//! (`/` in production, a prepared tree in tests), in the order a user would
//! fix them: root first, then kernel support, then the policies that forbid
//! the load. Nothing here loads a kernel or stops a service; the load itself
//! (in [`crate::kexec`]) is the final word and happens before the stop too.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{KexecError, Result};

/// EFI global variable GUID: the `SecureBoot` variable lives under it.
const EFI_GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-e0ffbe8d8f3c";

/// Where the running system's files are (a prefix for tests).
#[derive(Debug, Clone)]
pub struct System {
    /// Prefix of `/proc`, `/sys`, `/run` and `/boot`: `/` on a real system.
    pub root: PathBuf,
}

impl Default for System {
    fn default() -> Self {
        System {
            root: PathBuf::from("/"),
        }
    }
}

impl System {
    /// `path` (absolute, as on a real system) under [`System::root`].
    pub fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }
}

/// What the preflight found: the policies that apply to the load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// The kernel lockdown mode (`none`, `integrity`, `confidentiality`) or
    /// `None` where the kernel has no lockdown support.
    pub lockdown: Option<String>,
    /// Whether firmware reports Secure Boot on (`None`: not an EFI system or
    /// the variable is unreadable).
    pub secure_boot: Option<bool>,
    /// Whether the kernel image to load carries an Authenticode signature.
    pub kernel_signed: bool,
}

/// Checks that kexec can work: root, kernel support, the sysctl, lockdown
/// and Secure Boot policies against `kernel` (the image that will be
/// loaded), and systemd as PID 1 (it does the clean stop).
///
/// Errors: the first refusal found, naming its cause and what to do.
pub fn check(system: &System, euid: u32, kernel: &Path) -> Result<Readiness> {
    require_root(euid)?;
    // CONFIG_KEXEC_CORE creates this file; without it neither system call exists.
    let loaded = system.path("/sys/kernel/kexec_loaded");
    if !loaded.exists() {
        return Err(KexecError::KexecNotBuilt { path: loaded });
    }
    let disabled = system.path("/proc/sys/kernel/kexec_load_disabled");
    if read_trimmed(&disabled)?.as_deref() == Some("1") {
        return Err(KexecError::KexecDisabled);
    }
    let lockdown = read_trimmed(&system.path("/sys/kernel/security/lockdown"))?
        .map(|text| lockdown_mode(&text));
    let secure_boot = secure_boot(system);
    let kernel_signed = is_signed_pe(kernel)?;
    tracing::debug!(?lockdown, ?secure_boot, kernel_signed, "kexec policies");
    if !kernel_signed {
        // Under lockdown kexec_file_load verifies the image's signature
        // (kexec_load is refused outright); Secure Boot turns lockdown on in
        // distribution kernels, and some enforce signatures without it.
        if let Some(mode) = lockdown.as_deref().filter(|m| *m != "none") {
            return Err(KexecError::UnsignedKernel {
                policy: format!("Kernel lockdown ({mode})"),
                kernel: kernel.to_owned(),
            });
        }
        if secure_boot == Some(true) {
            return Err(KexecError::UnsignedKernel {
                policy: "Secure Boot".into(),
                kernel: kernel.to_owned(),
            });
        }
    }
    let systemd = system.path("/run/systemd/system");
    if !systemd.is_dir() {
        return Err(KexecError::NoSystemd { path: systemd });
    }
    Ok(Readiness {
        lockdown,
        secure_boot,
        kernel_signed,
    })
}

/// The first check, on its own for callers that look for files only root
/// may read before [`check`]: refuses an effective user id other than 0.
pub fn require_root(euid: u32) -> Result<()> {
    if euid != 0 {
        return Err(KexecError::NotRoot { euid });
    }
    Ok(())
}

/// A file's content without surrounding white space; `None` when it does not exist.
fn read_trimmed(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KexecError::Read {
            path: path.to_owned(),
            what: "a kexec policy of the running kernel".into(),
            source,
        }),
    }
}

/// The selected mode of `/sys/kernel/security/lockdown` ("none [integrity]
/// confidentiality" -> "integrity").
pub fn lockdown_mode(text: &str) -> String {
    text.split_whitespace()
        .find_map(|word| word.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .unwrap_or(text.trim())
        .to_owned()
}

/// Secure Boot state from efivarfs: 4 attribute bytes, then 1 for on.
fn secure_boot(system: &System) -> Option<bool> {
    let var = system.path(&format!(
        "/sys/firmware/efi/efivars/SecureBoot-{EFI_GLOBAL}"
    ));
    let data = fs::read(var).ok()?;
    data.get(4).map(|&b| b == 1)
}

/// Whether `path` is a PE image (an x86 bzImage is one) with a non-empty
/// certificate table: the Authenticode signature kexec verifies.
pub fn is_signed_pe(path: &Path) -> Result<bool> {
    let data = fs::read(path).map_err(|source| KexecError::Read {
        path: path.to_owned(),
        what: "the kernel image to load".into(),
        source,
    })?;
    Ok(pe_certificate_size(&data).is_some_and(|size| size > 0))
}

/// Size of the PE certificate table (data directory 4), if `data` is a PE image.
fn pe_certificate_size(data: &[u8]) -> Option<u32> {
    let u16_at = |off: usize| Some(u16::from_le_bytes(data.get(off..off + 2)?.try_into().ok()?));
    let u32_at = |off: usize| Some(u32::from_le_bytes(data.get(off..off + 4)?.try_into().ok()?));
    if data.get(..2)? != b"MZ" {
        return None;
    }
    let pe = u32_at(0x3c)? as usize;
    if data.get(pe..pe + 4)? != b"PE\0\0" {
        return None;
    }
    let optional = pe + 24;
    let directories = match u16_at(optional)? {
        0x20b => optional + 112, // PE32+
        0x10b => optional + 96,  // PE32
        _ => return None,
    };
    u32_at(directories + 4 * 8 + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE32+ header with a certificate table of `cert` bytes.
    fn pe(cert: u32) -> Vec<u8> {
        let mut data = vec![0u8; 512];
        data[..2].copy_from_slice(b"MZ");
        data[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        data[0x80..0x84].copy_from_slice(b"PE\0\0");
        data[0x98..0x9a].copy_from_slice(&0x20bu16.to_le_bytes());
        let dir = 0x98 + 112 + 4 * 8;
        data[dir..dir + 4].copy_from_slice(&0x100u32.to_le_bytes());
        data[dir + 4..dir + 8].copy_from_slice(&cert.to_le_bytes());
        data
    }

    /// A system tree where kexec works: returns it and the kernel path.
    fn ready(signed: bool) -> (tempfile::TempDir, System, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let system = System {
            root: dir.path().to_owned(),
        };
        for folder in [
            "sys/kernel",
            "proc/sys/kernel",
            "run/systemd/system",
            "boot",
        ] {
            fs::create_dir_all(system.path(folder)).unwrap();
        }
        fs::write(system.path("/sys/kernel/kexec_loaded"), "0\n").unwrap();
        fs::write(system.path("/proc/sys/kernel/kexec_load_disabled"), "0\n").unwrap();
        let kernel = system.path("/boot/vmlinuz");
        fs::write(&kernel, pe(if signed { 0x700 } else { 0 })).unwrap();
        (dir, system, kernel)
    }

    #[test]
    fn ready_system_passes() {
        let (_dir, system, kernel) = ready(false);
        let found = check(&system, 0, &kernel).unwrap();
        assert_eq!(
            found,
            Readiness {
                lockdown: None,
                secure_boot: None,
                kernel_signed: false
            }
        );
    }

    #[test]
    fn not_root_is_refused_first() {
        let (_dir, system, kernel) = ready(false);
        // Even with kexec disabled too, the user hears about root first.
        fs::write(system.path("/proc/sys/kernel/kexec_load_disabled"), "1\n").unwrap();
        let err = check(&system, 1000, &kernel).unwrap_err();
        assert!(matches!(err, KexecError::NotRoot { euid: 1000 }), "{err}");
        assert!(err.to_string().contains("sudo"), "{err}");
        assert!(err.is_refusal());
    }

    #[test]
    fn no_kexec_in_kernel_is_refused() {
        let (_dir, system, kernel) = ready(false);
        fs::remove_file(system.path("/sys/kernel/kexec_loaded")).unwrap();
        let err = check(&system, 0, &kernel).unwrap_err();
        assert!(matches!(err, KexecError::KexecNotBuilt { .. }), "{err}");
        assert!(err.to_string().contains("CONFIG_KEXEC_FILE"), "{err}");
    }

    #[test]
    fn disabled_sysctl_is_refused() {
        let (_dir, system, kernel) = ready(true);
        fs::write(system.path("/proc/sys/kernel/kexec_load_disabled"), "1\n").unwrap();
        let err = check(&system, 0, &kernel).unwrap_err();
        assert!(matches!(err, KexecError::KexecDisabled), "{err}");
        assert!(err.to_string().contains("kexec_load_disabled"), "{err}");
    }

    #[test]
    fn lockdown_needs_a_signed_kernel() {
        let (_dir, system, kernel) = ready(false);
        fs::create_dir_all(system.path("/sys/kernel/security")).unwrap();
        fs::write(
            system.path("/sys/kernel/security/lockdown"),
            "none [integrity] confidentiality\n",
        )
        .unwrap();
        let err = check(&system, 0, &kernel).unwrap_err();
        assert!(err.to_string().contains("lockdown (integrity)"), "{err}");
        // The same policy with a signed kernel: kexec_file_load verifies it.
        fs::write(&kernel, pe(0x700)).unwrap();
        let found = check(&system, 0, &kernel).unwrap();
        assert_eq!(found.lockdown.as_deref(), Some("integrity"));
        assert!(found.kernel_signed);
    }

    #[test]
    fn lockdown_none_allows_unsigned() {
        let (_dir, system, kernel) = ready(false);
        fs::create_dir_all(system.path("/sys/kernel/security")).unwrap();
        fs::write(
            system.path("/sys/kernel/security/lockdown"),
            "[none] integrity confidentiality\n",
        )
        .unwrap();
        assert_eq!(
            check(&system, 0, &kernel).unwrap().lockdown.as_deref(),
            Some("none")
        );
    }

    #[test]
    fn secure_boot_needs_a_signed_kernel() {
        let (_dir, system, kernel) = ready(false);
        let vars = system.path("/sys/firmware/efi/efivars");
        fs::create_dir_all(&vars).unwrap();
        fs::write(
            vars.join(format!("SecureBoot-{EFI_GLOBAL}")),
            [6, 0, 0, 0, 1],
        )
        .unwrap();
        let err = check(&system, 0, &kernel).unwrap_err();
        assert!(
            matches!(&err, KexecError::UnsignedKernel { policy, .. } if policy == "Secure Boot"),
            "{err}"
        );
        fs::write(
            vars.join(format!("SecureBoot-{EFI_GLOBAL}")),
            [6, 0, 0, 0, 0],
        )
        .unwrap();
        assert_eq!(check(&system, 0, &kernel).unwrap().secure_boot, Some(false));
    }

    #[test]
    fn no_systemd_is_refused() {
        let (_dir, system, kernel) = ready(false);
        fs::remove_dir(system.path("/run/systemd/system")).unwrap();
        let err = check(&system, 0, &kernel).unwrap_err();
        assert!(matches!(err, KexecError::NoSystemd { .. }), "{err}");
    }

    #[test]
    fn pe_parsing() {
        assert_eq!(pe_certificate_size(&pe(0x700)), Some(0x700));
        assert_eq!(pe_certificate_size(b"\x7fELF not a PE"), None);
        assert_eq!(pe_certificate_size(&pe(0)[..0x90]), None);
        assert_eq!(lockdown_mode("[none] integrity"), "none");
    }
}
