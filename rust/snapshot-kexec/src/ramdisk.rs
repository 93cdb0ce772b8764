//! What `/init` does in the ramdisk: mounts, console, modules, and the way back.
//!
//! PID 1 must never exit (the kernel panics) and must never hang: every path
//! ends in [`finish`], which kexecs back, reboots or powers off, and falls
//! back to a firmware reboot when the chosen way fails.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::settings::{RETURN_INITRD, RETURN_KERNEL, Return, Settings, ramdisk_cmdline};

/// `finit_module` flag: the file is compressed, the kernel decompresses it (5.17+).
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

/// Whether this process is the ramdisk's `/init` (PID 1 started from our initramfs).
pub fn is_ramdisk_init() -> bool {
    std::process::id() == 1 && Path::new(crate::settings::SETTINGS_PATH).exists()
}

/// Mounts `/proc`, `/sys`, `/dev` (devtmpfs) and sends standard input, output
/// and error to `/dev/console`. Failures are printed and otherwise ignored:
/// the console may still work, and the way back does not need the mounts.
pub fn setup() {
    for (source, target, fstype) in [
        ("devtmpfs", "/dev", "devtmpfs"),
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("tmpfs", "/run", "tmpfs"),
    ] {
        if let Err(err) = mount(source, target, fstype) {
            say(&format!("cannot mount {target}: {err}"));
        }
    }
    if let Ok(console) = File::options().read(true).write(true).open("/dev/console") {
        for fd in 0..3 {
            // SAFETY: console is open; dup2 onto the standard descriptors.
            unsafe { libc::dup2(console.as_raw_fd(), fd) };
        }
    }
}

fn mount(source: &str, target: &str, fstype: &str) -> io::Result<()> {
    mount_with(source, target, fstype, 0)
}

/// Mounts `source` (a device path or a pseudo filesystem's name) on
/// `target` with `flags` (`libc::MS_RDONLY`...); already mounted is fine.
pub fn mount_with(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    let c = |s: &str| CString::new(s).expect("constant without NUL");
    let (source, target, fstype) = (c(source), c(target), c(fstype));
    // SAFETY: all pointers are valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EBUSY) {
            return Err(err);
        }
    }
    Ok(())
}

/// Unmounts `target` (flushing what was written there).
pub fn unmount(target: &str) -> io::Result<()> {
    let target = CString::new(target).map_err(io::Error::other)?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount(target.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Seconds since the running kernel started (`/proc/uptime`).
pub fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or_default()
}

/// Mounts efivarfs where the kernel has EFI runtime services; returns
/// whether the variables can be written.
pub fn mount_efivars() -> bool {
    if !Path::new("/sys/firmware/efi").exists() {
        return false;
    }
    match mount("efivarfs", crate::outcome::EFIVARS, "efivarfs") {
        Ok(()) => true,
        Err(err) => {
            say(&format!("cannot mount efivarfs: {err}"));
            false
        }
    }
}

/// A line on the console, prefixed so the user (and the lab) can find it.
pub fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "ironic-snapshot ramdisk: {line}");
    let _ = out.flush();
}

/// Loads the module files in `dir` named by `names`, in order. A module
/// already loaded is fine; a compressed one is handed to the kernel as is.
/// Returns the errors, one line each (the capture then decides whether its
/// disk and network came up).
pub fn load_modules(dir: &Path, names: &[String]) -> Vec<String> {
    let mut errors = Vec::new();
    for name in names {
        let path = dir.join(name);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(err) => {
                errors.push(format!("{name}: {err}"));
                continue;
            }
        };
        let compressed = [".xz", ".zst", ".gz"].iter().any(|ext| name.ends_with(ext));
        let flags = if compressed {
            MODULE_INIT_COMPRESSED_FILE
        } else {
            0
        };
        // SAFETY: file is open for reading; the parameter string is empty.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                file.as_raw_fd(),
                c"".as_ptr(),
                flags,
            )
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EEXIST) {
                errors.push(format!("{name}: {err}"));
            }
        }
    }
    errors
}

/// Waits up to `timeout` for block device `name` to appear (its driver may
/// still be probing after the module loaded); returns its size in bytes.
pub fn wait_for_disk(name: &str, timeout: std::time::Duration) -> Option<u64> {
    let size = Path::new("/sys/class/block").join(name).join("size");
    let deadline = std::time::Instant::now() + timeout;
    loop {
        // sysfs counts 512-byte sectors whatever the device's block size.
        if let Some(sectors) = std::fs::read_to_string(&size)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .filter(|&s| s > 0)
        {
            return Some(sectors * 512);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Ends the ramdisk the way `settings` asks; never returns. kexec back loads
/// [`RETURN_KERNEL`] with [`RETURN_INITRD`] and the original command line;
/// if that fails, the firmware reboots (the OS comes back either way).
pub fn finish(settings: &Settings) -> ! {
    // The timeout's watchdog and the work may both get here: the first wins.
    static FINISHING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if FINISHING.swap(true, std::sync::atomic::Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
    // SAFETY: sync(2) has no arguments.
    unsafe { libc::sync() };
    if settings.return_to == Return::Kexec {
        match kexec_back(settings) {
            Ok(()) => say("kexec back into the original kernel"),
            Err(err) => say(&format!(
                "cannot kexec back ({err}): rebooting through the firmware"
            )),
        }
        let err = crate::kexec::jump();
        say(&format!(
            "the jump back failed ({err}): rebooting through the firmware"
        ));
    }
    let cmd = match settings.return_to {
        Return::Poweroff => libc::LINUX_REBOOT_CMD_POWER_OFF,
        _ => libc::LINUX_REBOOT_CMD_RESTART,
    };
    loop {
        // SAFETY: reboot(2) with a constant command.
        unsafe { libc::reboot(cmd) };
        std::thread::sleep(std::time::Duration::from_secs(5));
    }
}

fn kexec_back(settings: &Settings) -> crate::Result<()> {
    let open = |path: &str| {
        File::open(path).map_err(|source| crate::KexecError::Read {
            path: path.into(),
            what: "the way back".into(),
            source,
        })
    };
    let kernel = open(RETURN_KERNEL)?;
    let initrd = settings
        .has_initrd
        .then(|| open(RETURN_INITRD))
        .transpose()?;
    crate::kexec::load(&kernel, initrd.as_ref(), &settings.cmdline)
}

/// The ramdisk kernel's command line for `settings` (console only).
pub fn cmdline_for(settings: &Settings) -> String {
    ramdisk_cmdline(&settings.cmdline)
}
