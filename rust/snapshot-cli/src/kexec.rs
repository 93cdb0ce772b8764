//! `ironic-snapshot kexec-capture` (preview) and the ramdisk's `/init`.
//!
//! The mechanics live in `snapshot-kexec`; this is the glue: find the running
//! kernel, check everything before touching anything, build the ramdisk in a
//! memfd, load it, let `systemctl kexec` stop the system and jump. In the
//! ramdisk the same binary runs as PID 1 ([`ramdisk_main`]).

use std::fs;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use snapshot_core::CaptureOptions;
use snapshot_kexec::modules::{self, ModuleIndex};
use snapshot_kexec::net::Network;
use snapshot_kexec::outcome::{self, Outcome};
use snapshot_kexec::preflight::{self, System};
use snapshot_kexec::settings::{
    CA_FILE, CaptureSettings, GlanceSettings, MODULES_DIR, OUTPUT_MOUNT, OutputFile, Return,
    SecretText, Settings,
};
use snapshot_kexec::{KexecError, initramfs, kexec, ramdisk};
use snapshot_openstack::{GlanceTarget, Secret, Target};

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
    /// The Glance image to fill, resolved on the running system.
    pub glance: Option<GlanceTarget>,
    /// Overwrite OUT if it exists.
    pub force: bool,
    /// Memory limit of a Glance upload in the ramdisk (`None`: half of what it has).
    pub memory_limit: Option<u64>,
    /// Copy free space too.
    pub no_skip_free_space: bool,
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
        if req.source.is_none() {
            return Err(KexecCommandError::Usage {
                option: "SOURCE",
                reason: "give the disk to capture (or --round-trip-only to jump there and back)"
                    .into(),
            });
        }
        if req.output.is_none() == req.glance.is_none() {
            return Err(KexecCommandError::Usage {
                option: "--output",
                reason: "give one destination: -o FILE (on another disk) or --glance-image ID"
                    .into(),
            });
        }
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
        let disk = snapshot_core::Source::open(source)?;
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
            snapshot_core::check_output(output, &disk)?;
        }
        let name = fs::canonicalize(source)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default();
        needs.push((name.clone(), format!("disk {}", source.display())));
    }
    let output = match (&req.output, req.round_trip_only) {
        (Some(path), false) => Some(output_file(path, req.force)?),
        _ => None,
    };
    let mut fs_modules = Vec::new();
    if let Some(out) = &output {
        needs.push((out.device.clone(), format!("the disk of {}", out.shown_as)));
        fs_modules.push((out.fstype.clone(), format!("filesystem {}", out.fstype)));
    }
    if Path::new("/sys/firmware/efi").exists() {
        // The outcome travels back in an EFI variable (see snapshot_kexec::outcome).
        fs_modules.push(("efivarfs".into(), "the outcome record".into()));
    }
    let glance = match (&req.glance, req.round_trip_only) {
        (Some(target), false) => Some(check_glance(target)?),
        _ => None,
    };
    let network = if glance.is_some() {
        let network = Network::current().map_err(|source| KexecError::Read {
            path: "/proc/net/route".into(),
            what: "the network to reproduce in the ramdisk".into(),
            source,
        })?;
        if network.interfaces.is_empty() {
            return Err(KexecCommandError::Usage {
                option: "--glance-image",
                reason: "no interface carries an IPv4 route: the ramdisk could not reach Glance"
                    .into(),
            });
        }
        Some(network)
    } else {
        None
    };
    let sysfs = Path::new("/sys");
    let index = ModuleIndex::load(&Path::new("/lib/modules").join(&release))?;
    let mut module_files = Vec::new();
    for (device, what) in &needs {
        let dir = modules::block_device_dir(sysfs, device)?;
        let names = modules::device_modules(&dir);
        module_files.extend(index.resolve(&names, what)?);
    }
    for (name, what) in &fs_modules {
        // A filesystem built into the kernel (or not a module here) needs nothing.
        if let Ok(files) = index.resolve(std::slice::from_ref(name), what) {
            module_files.extend(files);
        }
    }
    let interfaces: Vec<String> = match &network {
        Some(network) => network.interfaces.iter().map(|i| i.name.clone()).collect(),
        None => default_route_interfaces(),
    };
    for iface in interfaces {
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
        network: network.clone(),
        output: output.clone(),
        glance: glance.as_ref().map(|(g, _)| g.clone()),
        capture: CaptureSettings {
            memory_limit: req.memory_limit,
            no_skip_free_space: req.no_skip_free_space,
        },
    };
    let mut files = Vec::new();
    if network.is_some() {
        for (path, from) in [
            ("/etc/resolv.conf", resolv_conf()),
            ("/etc/hosts", PathBuf::from("/etc/hosts")),
        ] {
            if let Ok(data) = fs::read(&from) {
                files.push((path.to_owned(), data));
            }
        }
    }
    if let Some((_, Some(ca))) = &glance {
        files.push((CA_FILE.to_owned(), ca.clone()));
    }
    let contents = initramfs::Contents {
        init: PathBuf::from("/proc/self/exe"),
        modules: module_files.iter().map(|f| index.dir.join(f)).collect(),
        kernel: kernel.clone(),
        initrd: Some(initrd),
        files,
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
        "network": network,
        "output": output,
        "glance_image": glance.as_ref().map(|(g, _)| g.image_id.clone()),
    });
    if req.dry_run {
        kexec::unload()?;
        println!("{summary}");
        return Ok(());
    }
    // The record read after the return must be this run's.
    if Path::new(outcome::EFIVARS)
        .join(outcome::EFI_VARIABLE)
        .exists()
        && let Err(err) = outcome::clear_efi(Path::new(outcome::EFIVARS))
    {
        tracing::warn!(error = %err, "Cannot remove the previous run's outcome record");
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

/// Where OUT lives: the device and filesystem the ramdisk mounts, and the
/// path inside it (from `/proc/self/mountinfo`).
fn output_file(path: &Path, force: bool) -> Result<OutputFile, KexecCommandError> {
    let usage = |reason: String| KexecCommandError::Usage {
        option: "--output",
        reason,
    };
    if path.exists() && !force {
        return Err(snapshot_core::Error::OutputExists {
            path: path.to_owned(),
        }
        .into());
    }
    let name = path
        .file_name()
        .ok_or_else(|| usage(format!("{} names no file", path.display())))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = fs::canonicalize(dir).map_err(|err| {
        usage(format!(
            "the folder of {} is not there ({err})",
            path.display()
        ))
    })?;
    let full = dir.join(name);
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").map_err(|source| KexecError::Read {
            path: "/proc/self/mountinfo".into(),
            what: "where the output file lives".into(),
            source,
        })?;
    // The mount with the longest mount point that holds the file.
    let mut best: Option<(PathBuf, String, String, String)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(dash) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < dash + 3 || fields.len() < 5 {
            continue;
        }
        let point = PathBuf::from(unescape(fields[4]));
        if !full.starts_with(&point) {
            continue;
        }
        if best
            .as_ref()
            .is_some_and(|(p, ..)| p.as_os_str().len() >= point.as_os_str().len())
        {
            continue;
        }
        best = Some((
            point,
            unescape(fields[3]),
            fields[2].to_owned(),
            fields[dash + 1].to_owned(),
        ));
    }
    let (point, root, devno, fstype) =
        best.ok_or_else(|| usage(format!("no mount holds {}", full.display())))?;
    let device = fs::read_link(format!("/sys/dev/block/{devno}"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .ok_or_else(|| {
            usage(format!(
                "{} is on {} ({fstype}), which is not a block device: the ramdisk can only write to a disk's filesystem",
                full.display(),
                point.display()
            ))
        })?;
    let inside = Path::new(&root).join(full.strip_prefix(&point).unwrap_or(&full));
    Ok(OutputFile {
        device,
        fstype,
        path: inside.to_string_lossy().into_owned(),
        shown_as: full.to_string_lossy().into_owned(),
        force,
    })
}

/// mountinfo escapes spaces and the like as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The image must be queued and the token good now, before anything stops;
/// returns what the ramdisk is told and the CA bundle's bytes.
fn check_glance(
    target: &GlanceTarget,
) -> Result<(GlanceSettings, Option<Vec<u8>>), KexecCommandError> {
    let image = snapshot_openstack::glance::open_image(target)?;
    let status = image
        .record
        .get("status")
        .and_then(|v| v.as_str())
        .unwrap_or("unknown");
    if status != "queued" {
        return Err(snapshot_core::Error::ImageNotQueued {
            service: "Glance",
            image_id: target.image_id.clone(),
            status: status.to_owned(),
        }
        .into());
    }
    let ca = match &target.ca_file {
        Some(path) => Some(fs::read(path).map_err(|source| KexecError::Read {
            path: path.clone(),
            what: "the CA bundle for the upload".into(),
            source,
        })?),
        None => None,
    };
    Ok((
        GlanceSettings {
            endpoint: target.endpoint.clone(),
            image_id: target.image_id.clone(),
            token: target
                .token
                .as_ref()
                .map(|t| SecretText(t.expose().to_owned())),
            insecure: target.insecure,
            has_ca_file: ca.is_some(),
        },
        ca,
    ))
}

/// The resolver configuration with real servers: systemd-resolved's stub
/// (127.0.0.53) is not in the ramdisk, the file it reads from is.
fn resolv_conf() -> PathBuf {
    let stub = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let upstream = Path::new("/run/systemd/resolve/resolv.conf");
    if stub.contains("127.0.0.53") && upstream.exists() {
        upstream.to_owned()
    } else {
        PathBuf::from("/etc/resolv.conf")
    }
}

/// `kexec-capture --status`: prints the record of the last run (JSON on
/// standard output, the line on standard error); the exit code says
/// success (0), failure (8) or no record (9).
pub fn status() -> u8 {
    match outcome::read_efi(Path::new(outcome::EFIVARS)) {
        Ok(Some(record)) => {
            println!("{}", String::from_utf8_lossy(&record.to_json()));
            eprintln!("ironic-snapshot: last kexec-capture: {}", record.line());
            if record.ok { 0 } else { EXIT_CAPTURE_FAILED }
        }
        Ok(None) => {
            eprintln!(
                "ironic-snapshot: no kexec-capture record in {}/{} (no run since the last one was cleared, or no UEFI)",
                outcome::EFIVARS,
                outcome::EFI_VARIABLE
            );
            EXIT_NO_RECORD
        }
        Err(err) => {
            eprintln!("ironic-snapshot: error: cannot read the kexec-capture record: {err}");
            EXIT_NO_RECORD
        }
    }
}

/// `--status`: the last capture failed.
pub const EXIT_CAPTURE_FAILED: u8 = 8;
/// `--status`: there is no record.
pub const EXIT_NO_RECORD: u8 = 9;

/// The record being filled in the ramdisk, shared with the timeout's watchdog.
type Shared = std::sync::Arc<std::sync::Mutex<Outcome>>;

fn with<T>(record: &Shared, f: impl FnOnce(&mut Outcome) -> T) -> T {
    let mut guard = record.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut guard)
}

/// Starts a step: it is what a timeout or failure names.
fn step(record: &Shared, stage: &str) -> std::time::Instant {
    with(record, |r| r.stage = stage.to_owned());
    std::time::Instant::now()
}

fn took(record: &Shared, name: &str, since: std::time::Instant) {
    with(record, |r| {
        r.timings.insert(
            name.to_owned(),
            (since.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        )
    });
}

/// Stores the record where the returning system finds it and says it.
fn store(record: &Outcome, efi: bool) {
    ramdisk::say(&format!("outcome: {}", record.line()));
    ramdisk::say(&format!(
        "record: {}",
        String::from_utf8_lossy(&record.to_json())
    ));
    if efi {
        match outcome::write_efi(Path::new(outcome::EFIVARS), record) {
            Ok(()) => ramdisk::say(&format!(
                "record stored in EFI variable {}",
                outcome::EFI_VARIABLE
            )),
            Err(err) => ramdisk::say(&format!(
                "cannot store the record in an EFI variable: {err}"
            )),
        }
    }
}

/// The ramdisk's `/init`: set up, load modules, do the work, go back. Never returns.
pub fn ramdisk_main() -> ! {
    ramdisk::setup();
    let started = std::time::Instant::now();
    let kernel_seconds = ramdisk::uptime();
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
                network: None,
                output: None,
                glance: None,
                capture: CaptureSettings::default(),
            });
        }
    };
    ramdisk::say(&format!(
        "running as /init (version {}, kernel {}, up {kernel_seconds:.1} s)",
        settings.version, settings.release
    ));
    let record: Shared = std::sync::Arc::new(std::sync::Mutex::new(Outcome {
        ok: false,
        stage: "modules".into(),
        error: None,
        target: None,
        report: Default::default(),
        timings: [("kernel".to_owned(), (kernel_seconds * 10.0).round() / 10.0)].into(),
        version: settings.version.clone(),
    }));
    let mut efi = false;
    if !settings.round_trip_only {
        // Never hang: whatever the work is doing, the way back starts at the timeout.
        let settings = settings.clone();
        let record = std::sync::Arc::clone(&record);
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(settings.timeout_seconds));
            let mut timed_out = with(&record, |r| r.clone());
            timed_out.error = Some(format!(
                "timed out after {} s during {}",
                settings.timeout_seconds, timed_out.stage
            ));
            timed_out.stage = "timeout".into();
            timed_out.ok = false;
            store(&timed_out, Path::new(outcome::EFIVARS).join(".").exists());
            ramdisk::finish(&settings)
        });
    }
    let t = step(&record, "modules");
    let errors = ramdisk::load_modules(Path::new(MODULES_DIR), &settings.modules);
    took(&record, "modules", t);
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
    if !settings.round_trip_only {
        efi = ramdisk::mount_efivars();
    }
    if settings.round_trip_only {
        if let Some(name) = &settings.source_device {
            match ramdisk::wait_for_disk(name, std::time::Duration::from_secs(30)) {
                Some(size) => ramdisk::say(&format!("disk {name} is here: {size} bytes")),
                None => ramdisk::say(&format!("disk {name} did not appear within 30 s")),
            }
        }
        ramdisk::say("round trip only: nothing captured");
    } else {
        let result = work(&settings, &record);
        let mut done = with(&record, |r| {
            match &result {
                Ok(()) => {
                    r.ok = true;
                    r.stage = "done".into();
                }
                Err(err) => r.error = Some(err.clone()),
            }
            r.timings.insert(
                "total".into(),
                (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            );
            r.clone()
        });
        done.timings.entry("total".into()).or_default();
        store(&done, efi);
    }
    ramdisk::say(&format!(
        "done after {:.1} s, returning by {:?}",
        started.elapsed().as_secs_f64(),
        settings.return_to
    ));
    ramdisk::finish(&settings)
}

/// The capture in the ramdisk: network, disk, output, capture. The error is one line.
fn work(settings: &Settings, record: &Shared) -> Result<(), String> {
    let source = settings
        .source_device
        .clone()
        .ok_or("no source disk in the settings")?;
    if let Some(network) = &settings.network {
        let t = step(record, "network");
        let lines = network
            .apply(std::time::Duration::from_secs(30))
            .map_err(|err| err.to_string())?;
        for line in lines {
            ramdisk::say(&line);
        }
        took(record, "network", t);
    }
    let t = step(record, "disk");
    let size = ramdisk::wait_for_disk(&source, std::time::Duration::from_secs(30))
        .ok_or_else(|| format!("disk {source} did not appear within 30 s"))?;
    ramdisk::say(&format!("disk {source} is here: {size} bytes"));
    let mut mounted = None;
    let target = if let Some(out) = &settings.output {
        step(record, "output");
        ramdisk::wait_for_disk(&out.device, std::time::Duration::from_secs(30))
            .ok_or_else(|| format!("output disk {} did not appear within 30 s", out.device))?;
        ramdisk::mount_with(
            &format!("/dev/{}", out.device),
            OUTPUT_MOUNT,
            &out.fstype,
            0,
        )
        .map_err(|err| format!("cannot mount /dev/{} ({}): {err}", out.device, out.fstype))?;
        let path = Path::new(OUTPUT_MOUNT).join(out.path.trim_start_matches('/'));
        ramdisk::say(&format!(
            "output {} mounted, writing {}",
            out.device, out.shown_as
        ));
        mounted = Some(path.clone());
        with(record, |r| r.target = Some(out.shown_as.clone()));
        Target::Engine(snapshot_core::Target::File {
            path,
            force: out.force,
        })
    } else if let Some(glance) = &settings.glance {
        with(record, |r| {
            r.target = Some(format!("glance:{}", glance.image_id))
        });
        Target::Glance(GlanceTarget {
            endpoint: glance.endpoint.clone(),
            image_id: glance.image_id.clone(),
            token: glance.token.as_ref().map(|t| Secret::new(t.0.clone())),
            insecure: glance.insecure,
            ca_file: glance.has_ca_file.then(|| PathBuf::from(CA_FILE)),
        })
    } else {
        return Err("no output in the settings".into());
    };
    took(record, "disk", t);
    let options = CaptureOptions {
        memory_limit: settings
            .capture
            .memory_limit
            .unwrap_or_else(snapshot_core::auto_memory_limit),
        skip_free_space: !settings.capture.no_skip_free_space,
        ..CaptureOptions::default()
    };
    let t = step(record, "capture");
    ramdisk::say(&format!(
        "capturing /dev/{source} to {} (memory limit {})",
        target.describe(),
        snapshot_core::format_size(options.memory_limit)
    ));
    let last = std::sync::Mutex::new(std::time::Instant::now());
    let progress = |update: &snapshot_core::ProgressUpdate| {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= std::time::Duration::from_secs(15) {
            *last = std::time::Instant::now();
            ramdisk::say(&format!(
                "{}: {} of {}, {} written",
                update.phase.name(),
                snapshot_core::format_size(update.done),
                snapshot_core::format_size(update.total),
                snapshot_core::format_size(update.written)
            ));
        }
    };
    let result = snapshot_openstack::capture(
        Path::new(&format!("/dev/{source}")),
        &target,
        &options,
        &progress,
    );
    took(record, "capture", t);
    let result = result.map(|report| {
        let value = serde_json::to_value(&report).unwrap_or_default();
        with(record, |r| {
            for key in [
                "virtual_size",
                "image_size",
                "bytes_read",
                "sha256",
                "passes",
                "seconds",
                "format",
            ] {
                if let Some(v) = value.get(key) {
                    r.report.insert(key.to_owned(), v.clone());
                }
            }
        });
    });
    let result = result.map_err(|err| {
        let mut text = err.to_string();
        let mut cause = std::error::Error::source(&err);
        while let Some(c) = cause {
            text.push_str(&format!(": {c}"));
            cause = c.source();
        }
        text
    });
    if let Some(path) = mounted {
        // The record beside the image: where a machine without UEFI keeps it.
        let mut beside = with(record, |r| r.clone());
        if let Err(err) = &result {
            beside.error = Some(err.clone());
        } else {
            beside.ok = true;
            beside.stage = "done".into();
        }
        if let Err(err) = fs::write(outcome::beside(&path), beside.to_json()) {
            ramdisk::say(&format!("cannot write the record beside the image: {err}"));
        }
        // SAFETY: sync(2) has no arguments.
        unsafe { libc::sync() };
        if let Err(err) = ramdisk::unmount(OUTPUT_MOUNT) {
            ramdisk::say(&format!("cannot unmount the output filesystem: {err}"));
        }
    }
    result
}
