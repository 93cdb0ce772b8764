//! `ironic-snapshot kexec-capture` (preview) and the ramdisk's `/init`.
//!
//! The mechanics live in `snapshot-kexec`; this is the glue: find the running
//! kernel, check everything before touching anything, build the ramdisk in a
//! memfd, load it, let `systemctl kexec` stop the system and jump. In the
//! ramdisk the same binary runs as PID 1 ([`ramdisk_main`]).

use std::fs;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use snapshot_kexec::modules::{self, ModuleIndex};
use snapshot_kexec::preflight::{self, System};
use snapshot_kexec::settings::{MODULES_DIR, Return, Settings};
use snapshot_kexec::{KexecError, initramfs, kexec, ramdisk};

/// Options of `kexec-capture` (the clap side is in `main.rs`).
pub struct Request {
    /// The disk to capture (a block device).
    pub source: Option<PathBuf>,
    /// An image file to write (on another disk).
    pub output: Option<PathBuf>,
    /// How the ramdisk ends.
    pub return_to: Return,
    /// The kernel image to load (default: the running one's under /boot).
    pub kernel: Option<PathBuf>,
    /// Its initrd (default: the running one's under /boot).
    pub initrd: Option<PathBuf>,
    /// Seconds the ramdisk may take before it returns regardless.
    pub timeout: u64,
    /// Only jump into the ramdisk and back.
    pub round_trip_only: bool,
    /// Check, build and load, then unload instead of jumping.
    pub dry_run: bool,
}

/// What failed: a kexec refusal or a problem of the capture options.
#[derive(Debug, thiserror::Error)]
pub enum KexecCommandError {
    /// From the kexec mechanics.
    #[error(transparent)]
    Kexec(#[from] KexecError),
    /// From the engine's checks of the source and output.
    #[error(transparent)]
    Capture(#[from] snapshot_core::Error),
    /// Bad or missing options.
    #[error("Invalid option {option}: {reason}")]
    Usage {
        /// The option.
        option: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
}

/// Exit code of a refusal: kexec cannot work on this system.
pub const EXIT_REFUSED: u8 = 7;

/// The documented exit code of `kexec-capture`'s errors.
pub fn exit_code(
    err: &KexecCommandError,
    capture_code: impl Fn(&snapshot_core::Error) -> u8,
) -> u8 {
    match err {
        KexecCommandError::Kexec(err) if err.is_refusal() => EXIT_REFUSED,
        KexecCommandError::Kexec(KexecError::BootFileNotFound { .. })
        | KexecCommandError::Kexec(KexecError::DeviceNotFound { .. })
        | KexecCommandError::Usage { .. } => 2,
        KexecCommandError::Kexec(KexecError::ModuleMissing { .. }) => EXIT_REFUSED,
        KexecCommandError::Kexec(_) => 1,
        KexecCommandError::Capture(err) => capture_code(err),
    }
}

/// Runs `kexec-capture`: everything is checked and loaded before the
/// system is asked to stop; on success the system is going down.
pub fn run(req: &Request) -> Result<(), KexecCommandError> {
    if !req.round_trip_only {
        return Err(KexecCommandError::Usage {
            option: "--round-trip-only",
            reason: "capturing from the ramdisk is not implemented yet (preview): give --round-trip-only to jump into the ramdisk and back".into(),
        });
    }
    let system = System::default();
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    preflight::require_root(euid)?;
    let release = read_trimmed("/proc/sys/kernel/osrelease")?;
    let cmdline = read_trimmed("/proc/cmdline")?;
    let kernel = match &req.kernel {
        Some(path) => path.clone(),
        None => find(
            "image",
            "--kernel",
            &[
                format!("/boot/vmlinuz-{release}"),
                format!("/vmlinuz-{release}"),
            ],
        )?,
    };
    let readiness = preflight::check(&system, euid, &kernel)?;
    tracing::info!(?readiness, "kexec preflight passed");
    let initrd = match &req.initrd {
        Some(path) => path.clone(),
        None => find(
            "initrd",
            "--initrd",
            &[
                format!("/boot/initrd.img-{release}"),
                format!("/boot/initramfs-{release}.img"),
            ],
        )?,
    };

    // The source and output checks `capture` does, before anything stops.
    let mut needs: Vec<(String, String)> = Vec::new();
    if let Some(source) = &req.source {
        let disk = snapshot_core::source::Source::open(source)?;
        if !disk.is_block_device() {
            return Err(KexecCommandError::Usage {
                option: "SOURCE",
                reason: format!(
                    "{} is not a block device: kexec-capture captures a disk of this machine",
                    source.display()
                ),
            });
        }
        if let Some(output) = &req.output {
            snapshot_core::source::check_output(output, &disk)?;
        }
        let name = fs::canonicalize(source)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        needs.push((name.clone(), format!("disk {}", source.display())));
    }
    let sysfs = Path::new("/sys");
    let index = ModuleIndex::load(&Path::new("/lib/modules").join(&release))?;
    let mut module_files = Vec::new();
    for (device, what) in &needs {
        let dir = modules::block_device_dir(sysfs, device)?;
        let names = modules::device_modules(&dir);
        module_files.extend(index.resolve(&names, what)?);
    }
    for iface in default_route_interfaces() {
        if let Ok(dir) = modules::net_device_dir(sysfs, &iface) {
            let names = modules::device_modules(&dir);
            module_files.extend(index.resolve(&names, &format!("interface {iface}"))?);
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    module_files.retain(|f| seen.insert(f.clone()));

    let settings = Settings {
        version: snapshot_core::VERSION.into(),
        return_to: req.return_to,
        cmdline: cmdline.clone(),
        release: release.clone(),
        has_initrd: true,
        modules: Vec::new(),
        timeout_seconds: req.timeout,
        round_trip_only: req.round_trip_only,
        source_device: needs.first().map(|(name, _)| name.clone()),
    };
    let contents = initramfs::Contents {
        init: PathBuf::from("/proc/self/exe"),
        modules: module_files.iter().map(|f| index.dir.join(f)).collect(),
        kernel: kernel.clone(),
        initrd: Some(initrd),
    };
    let memfd = kexec::memfd("ironic-snapshot-ramdisk")?;
    let (mut memfd, size) = initramfs::build(memfd, &contents, &settings)?;
    memfd.rewind().map_err(|source| KexecError::Initramfs {
        what: "rewinding the memfd".into(),
        source,
    })?;
    let kernel_file = fs::File::open(&kernel).map_err(|source| KexecError::Read {
        path: kernel.clone(),
        what: "the kernel image to load".into(),
        source,
    })?;
    let ramdisk_cmdline = ramdisk::cmdline_for(&settings);
    kexec::load(&kernel_file, Some(&memfd), &ramdisk_cmdline)?;
    let summary = serde_json::json!({
        "kernel": kernel,
        "release": release,
        "ramdisk_bytes": size,
        "ramdisk_cmdline": ramdisk_cmdline,
        "modules": module_files,
        "return": settings.return_to,
        "lockdown": readiness.lockdown,
        "secure_boot": readiness.secure_boot,
        "kernel_signed": readiness.kernel_signed,
    });
    if req.dry_run {
        kexec::unload()?;
        println!("{summary}");
        return Ok(());
    }
    eprintln!(
        "ironic-snapshot: ramdisk loaded ({size} bytes, {} modules): stopping the system and jumping into it",
        module_files.len()
    );
    let _ = std::io::stderr().flush();
    // systemd stops services, unmounts filesystems (or remounts them
    // read-only) and, as a kernel is already loaded, jumps with reboot(2).
    let status = std::process::Command::new("systemctl")
        .arg("kexec")
        .status();
    match status {
        Ok(status) if status.success() => Ok(()),
        other => {
            let _ = kexec::unload();
            let source = match other {
                Ok(status) => std::io::Error::other(format!("systemctl kexec {status}")),
                Err(err) => err,
            };
            Err(KexecError::Jump {
                what: "systemctl kexec".into(),
                source,
            }
            .into())
        }
    }
}

/// The interfaces of default routes (`/proc/net/route`): the ones that reach a target.
fn default_route_interfaces() -> Vec<String> {
    let text = fs::read_to_string("/proc/net/route").unwrap_or_default();
    let mut names: Vec<String> = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let iface = fields.next()?;
            (fields.next()? == "00000000").then(|| iface.to_owned())
        })
        .collect();
    names.dedup();
    names
}

fn read_trimmed(path: &str) -> Result<String, KexecError> {
    fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .map_err(|source| KexecError::Read {
            path: path.into(),
            what: "a fact of the running kernel".into(),
            source,
        })
}

fn find(what: &'static str, option: &'static str, tried: &[String]) -> Result<PathBuf, KexecError> {
    tried
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| KexecError::BootFileNotFound {
            what,
            tried: tried.iter().map(PathBuf::from).collect(),
            option,
        })
}

/// The ramdisk's `/init`: set up, load modules, do the work, go back. Never returns.
pub fn ramdisk_main() -> ! {
    ramdisk::setup();
    let started = std::time::Instant::now();
    let settings = match Settings::read(Path::new(snapshot_kexec::settings::SETTINGS_PATH)) {
        Ok(settings) => settings,
        Err(err) => {
            ramdisk::say(&format!("{err}: rebooting"));
            // No settings, no way back by kexec: the firmware brings the OS back.
            ramdisk::finish(&Settings {
                version: String::new(),
                return_to: Return::Reboot,
                cmdline: String::new(),
                release: String::new(),
                has_initrd: false,
                modules: Vec::new(),
                timeout_seconds: 0,
                round_trip_only: true,
                source_device: None,
            });
        }
    };
    ramdisk::say(&format!(
        "running as /init (version {}, kernel {})",
        settings.version, settings.release
    ));
    let errors = ramdisk::load_modules(Path::new(MODULES_DIR), &settings.modules);
    ramdisk::say(&format!(
        "loaded {} of {} modules{}",
        settings.modules.len() - errors.len(),
        settings.modules.len(),
        if errors.is_empty() {
            String::new()
        } else {
            format!(" (failed: {})", errors.join("; "))
        }
    ));
    if let Some(name) = &settings.source_device {
        match ramdisk::wait_for_disk(name, std::time::Duration::from_secs(30)) {
            Some(size) => ramdisk::say(&format!("disk {name} is here: {size} bytes")),
            None => ramdisk::say(&format!("disk {name} did not appear within 30 s")),
        }
    }
    if settings.round_trip_only {
        ramdisk::say("round trip only: nothing captured");
    }
    ramdisk::say(&format!(
        "done after {:.1} s, returning by {:?}",
        started.elapsed().as_secs_f64(),
        settings.return_to
    ));
    ramdisk::finish(&settings)
}
