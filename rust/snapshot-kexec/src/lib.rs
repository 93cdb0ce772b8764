//! kexec mechanics of `ironic-snapshot kexec-capture`.
//!
//! The command captures a disk while it is offline without a firmware
//! reboot: the running system loads its own kernel with an initramfs built in
//! memory (this binary as `/init`, the kernel modules of the disk and the
//! network interface, a settings file), lets systemd stop everything and jump
//! into it, and the ramdisk jumps back into the original kernel with its
//! initrd and command line afterwards.
//!
//! This crate holds the parts that know nothing of images or OpenStack:
//!
//! - [`preflight`]: refuse before anything is touched when kexec cannot work
//!   here (not root, `kernel.kexec_load_disabled`, kernel lockdown or Secure
//!   Boot with an unsigned kernel, no kexec in the kernel);
//! - [`cpio`]: a `newc` archive writer (the initramfs format);
//! - [`modules`]: which kernel modules drive a device (sysfs) and what they
//!   depend on (`modules.dep`);
//! - [`settings`]: what the ramdisk is told (and the way back);
//! - [`initramfs`]: the archive assembled from all of the above, in memory;
//! - [`kexec`]: `kexec_file_load` from memory file descriptors and the jump;
//! - [`ramdisk`]: what `/init` does once the new kernel runs it.

pub mod cpio;
pub mod error;
pub mod initramfs;
pub mod kexec;
pub mod modules;
pub mod net;
pub mod outcome;
pub mod preflight;
pub mod ramdisk;
pub mod settings;

pub use error::{KexecError, Result};
