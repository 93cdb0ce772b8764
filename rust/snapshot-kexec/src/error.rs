//! The crate's one error type.
//!
//! As in `snapshot-core`: every message names what went wrong and what to do,
//! starts with a capital letter and has no trailing period; an underlying
//! cause is attached as `source`.

use std::io;
use std::path::PathBuf;

/// Result type of this crate.
pub type Result<T, E = KexecError> = std::result::Result<T, E>;

/// What can stop a kexec capture.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KexecError {
    /// The command must run as root (it loads a kernel and stops the system).
    #[error(
        "kexec-capture must run as root (effective user id is {euid}): it loads a kernel and stops the system; run it with sudo"
    )]
    NotRoot {
        /// The effective user id found.
        euid: u32,
    },
    /// The running kernel has no kexec support.
    #[error(
        "The running kernel has no kexec support ({path} is missing): use a kernel built with CONFIG_KEXEC_FILE, or capture with Ironic's service step instead"
    )]
    KexecNotBuilt {
        /// The sysfs file whose absence says so.
        path: PathBuf,
    },
    /// `kernel.kexec_load_disabled` is set (it cannot be unset until a reboot).
    #[error(
        "kexec is disabled on this system (sysctl kernel.kexec_load_disabled = 1, which only a reboot clears): reboot without setting it, or capture with Ironic's service step instead"
    )]
    KexecDisabled,
    /// Kernel lockdown or Secure Boot requires a signed kernel and this one is not.
    #[error(
        "{policy} only lets kexec load signed kernels, and {kernel} carries no signature: boot a signed kernel (or turn {policy} off), or capture with Ironic's service step instead"
    )]
    UnsignedKernel {
        /// Which policy demands the signature ("Kernel lockdown (integrity)", "Secure Boot").
        policy: String,
        /// The kernel image that would be loaded.
        kernel: PathBuf,
    },
    /// The system is not run by systemd, which does the clean stop.
    #[error(
        "The system is not running systemd (no {path}): kexec-capture lets systemd stop services and unmount filesystems before the jump; capture with Ironic's service step instead"
    )]
    NoSystemd {
        /// The directory systemd creates when it is PID 1.
        path: PathBuf,
    },
    /// The running kernel's image or initrd was not found.
    #[error("Cannot find the running kernel's {what} (tried {}): give it with {option}", tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    BootFileNotFound {
        /// "image" or "initrd".
        what: &'static str,
        /// The paths looked at.
        tried: Vec<PathBuf>,
        /// The option that names it instead.
        option: &'static str,
    },
    /// Reading something of the running system failed.
    #[error("Cannot read {path}: {what}")]
    Read {
        /// The file or folder.
        path: PathBuf,
        /// Why it was read (and what to check).
        what: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A kernel module a device needs is not on the system.
    #[error(
        "Kernel module {name} (needed for {needed_for}) is not in {index}: install the modules of the running kernel"
    )]
    ModuleMissing {
        /// The module's name.
        name: String,
        /// What needs it.
        needed_for: String,
        /// The `modules.dep` looked in.
        index: PathBuf,
    },
    /// A device to find modules for does not exist in sysfs.
    #[error(
        "Device {device} is not in sysfs ({path} is missing): give a disk or interface of this system"
    )]
    DeviceNotFound {
        /// The device name given.
        device: String,
        /// The sysfs path looked at.
        path: PathBuf,
    },
    /// Building the in-memory initramfs failed.
    #[error("Cannot build the ramdisk in memory: {what}")]
    Initramfs {
        /// What was being done.
        what: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused to load the kexec kernel.
    #[error("The kernel refused {syscall}: {reason}")]
    LoadRefused {
        /// The system call refused (`kexec_file_load`).
        syscall: &'static str,
        /// What the error means here and what to do.
        reason: String,
        /// The error the kernel returned.
        #[source]
        source: io::Error,
    },
    /// Starting the stop-and-jump failed; the loaded kernel was unloaded.
    #[error("Cannot start the jump ({what}): the system was not stopped")]
    Jump {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The ramdisk's settings file is missing or malformed.
    #[error("Ramdisk settings {path} are unusable: {reason}")]
    Settings {
        /// The settings file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl KexecError {
    /// Whether this is a refusal before anything was touched because kexec
    /// cannot work on this system (as opposed to bad input or an I/O failure).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            KexecError::NotRoot { .. }
                | KexecError::KexecNotBuilt { .. }
                | KexecError::KexecDisabled
                | KexecError::UnsignedKernel { .. }
                | KexecError::NoSystemd { .. }
                | KexecError::LoadRefused { .. }
        )
    }
}
