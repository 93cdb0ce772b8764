//! Loading a kernel with `kexec_file_load` and jumping into it.
//!
//! The kernel image is passed as a file descriptor (the image file opened
//! read-only, or a memfd) and the initramfs as a memfd: nothing is written to
//! any disk. kexec-tools is not needed. The legacy `kexec_load` (segments
//! prepared in user space, with purgatory) is not implemented: where the
//! kernel refuses `kexec_file_load`, the error says so and why.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

use crate::error::{KexecError, Result};

/// `kexec_file_load` flag: unload the loaded kernel.
const KEXEC_FILE_UNLOAD: libc::c_ulong = 1;

/// Creates an anonymous in-memory file (a memfd) named `name` for /proc listings.
pub fn memfd(name: &str) -> Result<File> {
    let cname = CString::new(name).map_err(|_| KexecError::Initramfs {
        what: format!("memfd name {name:?} holds a NUL byte"),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    // SAFETY: cname is a valid NUL-terminated string; the flags are constants.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(KexecError::Initramfs {
            what: "memfd_create failed (the kernel is older than 3.17 or memory is short)".into(),
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: fd was just returned by memfd_create and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Loads `kernel` with `initrd` and `cmdline` for the next kexec jump.
///
/// Errors: [`KexecError::LoadRefused`] with what the kernel's answer means
/// here (signature rejected, forbidden by policy, no file load support).
pub fn load(kernel: &File, initrd: Option<&File>, cmdline: &str) -> Result<()> {
    let cmd = CString::new(cmdline).map_err(|_| KexecError::LoadRefused {
        syscall: "kexec_file_load",
        reason: "the command line holds a NUL byte".into(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    let (initrd_fd, flags) = match initrd {
        Some(file) => (file.as_raw_fd(), 0),
        // KEXEC_FILE_NO_INITRAMFS
        None => (-1, 4),
    };
    let len = cmd.as_bytes_with_nul().len();
    // SAFETY: both descriptors are open for reading; cmd outlives the call and
    // len counts its terminating NUL, as the system call requires.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            kernel.as_raw_fd(),
            initrd_fd,
            len as libc::c_ulong,
            cmd.as_ptr(),
            flags as libc::c_ulong,
        )
    };
    if rc != 0 {
        let source = io::Error::last_os_error();
        return Err(KexecError::LoadRefused {
            syscall: "kexec_file_load",
            reason: explain(&source),
            source,
        });
    }
    tracing::info!(cmdline, "kexec kernel loaded");
    Ok(())
}

/// Unloads a kernel loaded by [`load`] (when the jump does not happen after all).
pub fn unload() -> Result<()> {
    // SAFETY: with KEXEC_FILE_UNLOAD the descriptors and command line are ignored.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            -1,
            -1,
            0 as libc::c_ulong,
            std::ptr::null::<libc::c_char>(),
            KEXEC_FILE_UNLOAD,
        )
    };
    if rc != 0 {
        let source = io::Error::last_os_error();
        return Err(KexecError::LoadRefused {
            syscall: "kexec_file_load (unload)",
            reason: explain(&source),
            source,
        });
    }
    Ok(())
}

/// Whether a kexec kernel is loaded (`/sys/kernel/kexec_loaded`).
pub fn is_loaded() -> bool {
    std::fs::read_to_string("/sys/kernel/kexec_loaded").is_ok_and(|t| t.trim() == "1")
}

/// Jumps into the loaded kernel at once (no stop: filesystems must already
/// be unmounted or read-only). Returns only on failure.
pub fn jump() -> io::Error {
    // SAFETY: reboot(2) with a constant command; it returns only on error.
    unsafe {
        libc::sync();
        libc::reboot(libc::LINUX_REBOOT_CMD_KEXEC);
    }
    io::Error::last_os_error()
}

/// What a `kexec_file_load` error means, and what to do.
pub fn explain(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(libc::EPERM) => "the kernel forbids it (kernel.kexec_load_disabled, kernel lockdown, or no CAP_SYS_BOOT): check those, or capture with Ironic's service step".into(),
        Some(libc::EKEYREJECTED | libc::ENOKEY | libc::EBADMSG | libc::EKEYREVOKED | libc::EKEYEXPIRED) => {
            "the kernel image's signature was rejected (lockdown or Secure Boot accept only kernels signed with a trusted key): boot a signed kernel".into()
        }
        Some(libc::ENOEXEC) => "the file is not a kernel image this kernel can load (a bzImage on x86)".into(),
        Some(libc::ENOSYS) => "this kernel has no kexec_file_load (CONFIG_KEXEC_FILE is off) and the kexec_load fallback is not implemented: use a kernel with CONFIG_KEXEC_FILE".into(),
        Some(libc::EBUSY) => "another kexec load is in progress: retry when it is done".into(),
        Some(libc::ENOMEM) => "not enough memory for the kernel and the ramdisk: free memory or use a smaller output".into(),
        Some(libc::EINVAL) => "the kernel rejected the arguments (the image, initramfs or command line)".into(),
        _ => "unexpected error".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn memfd_holds_data_in_memory() {
        let mut file = memfd("ironic-snapshot-test").unwrap();
        file.write_all(b"initramfs").unwrap();
        file.rewind().unwrap();
        let mut back = String::new();
        file.read_to_string(&mut back).unwrap();
        assert_eq!(back, "initramfs");
        let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
        assert!(
            link.to_string_lossy()
                .starts_with("/memfd:ironic-snapshot-test"),
            "{link:?}"
        );
    }

    #[test]
    fn errors_are_explained() {
        for (errno, word) in [
            (libc::EPERM, "kexec_load_disabled"),
            (libc::EKEYREJECTED, "signature"),
            (libc::ENOSYS, "kexec_load fallback is not implemented"),
        ] {
            assert!(explain(&io::Error::from_raw_os_error(errno)).contains(word));
        }
    }
}
