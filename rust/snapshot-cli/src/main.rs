//! `ironic-snapshot`: command-line front end of the imaging engine.
//!
//! Only the command-line definition and glue live here: the engine
//! (`snapshot-core`) does the work, `auth` finds the Glance endpoint and
//! token, `progress` draws the progress line.

mod auth;
mod kexec;
mod progress;
mod signals;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use clap::{ArgAction, Parser, Subcommand, ValueEnum};
use snapshot_core::ErrorKind;
use snapshot_core::Target as EngineTarget;
use snapshot_core::{CaptureOptions, Compression, Error, Format, NoProgress, Progress, Report};
use snapshot_openstack::Target;

const EXIT_CODES: &str = "\
Exit codes:
  0    the image was written (and, for Glance, verified)
  1    other error (a bug: please report it)
  2    usage error: bad option or value, missing endpoint or credentials
  3    source problem: missing, unreadable, changed or failing disk
  4    output problem: cannot create or write the output or the report, it exists (use --force),
       or it would overwrite the source
  5    upload problem: Glance or Keystone refused or could not be reached
  6    verification failed: what Glance stored differs from what was sent
  130  cancelled by Ctrl-C (SIGINT); 129 for SIGHUP, 143 for SIGTERM (128 + the signal):
       the first signal stops the capture, a second one stops at once; either way the
       partial image and report are removed";

const CAPTURE_ABOUT: &str = "\
Capture a disk (block device or image file), opened read-only, into a compressed qcow2 or raw image: \
to a file, to standard output (-o -) or straight into a Glance image (--glance-image).";

const CAPTURE_LONG: &str = "\
Examples:
  ironic-snapshot capture /dev/sda -o /mnt/usb/node.qcow2
  ironic-snapshot capture /dev/nvme0n1 -o - | ssh host 'cat > node.qcow2'
  OS_TOKEN=... OS_IMAGE_ENDPOINT=https://cloud:9292 ironic-snapshot capture /dev/sda --glance-image ID
  ironic-snapshot capture /dev/sda --os-cloud mycloud --glance-image ID

Glance: create the image first (disk format qcow2 or raw, container format bare); it must be queued. \
The endpoint and token come from the flags, the usual environment (OS_IMAGE_ENDPOINT, OS_TOKEN) \
or the clouds.yaml entry named by --os-cloud (OS_CLOUD), in that order of precedence; with only \
OS_AUTH_URL and credentials (OS_USERNAME/OS_PASSWORD or OS_APPLICATION_CREDENTIAL_ID/SECRET) a token \
and the image endpoint are fetched from Keystone v3. \
After the upload, Glance's size, checksum and os_hash_value are checked against the image sent.

Reports: --json prints one JSON object (virtual_size, image_size, bytes_read, sha256, sha512, md5, \
seconds, format, compression, ...) on standard output. With -o - standard output carries the image, so \
--json is refused there: use --report FILE, which writes the same object to FILE in every mode. FILE gets the same checks as -o (new unless --force, never the source or the image) before anything is read, and appears only once the capture succeeded.

An image may be written beside a source image file, on the same filesystem; it is refused only when it would change the source: the source itself (or a hard link to it), a path on the device being captured (or a partition of it, or a device stacked on it), or the backing file of a loop device being captured.";

/// Capture a bare-metal node's disk into a cloud image.
#[derive(Parser)]
#[command(name = "ironic-snapshot", version = snapshot_core::VERSION, after_long_help = EXIT_CODES)]
struct Cli {
    /// More log output on standard error (-v info, -vv debug); RUST_LOG overrides
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,

    /// Only errors on standard error
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(about = CAPTURE_ABOUT, after_long_help = format!("{CAPTURE_LONG}\n\n{EXIT_CODES}"))]
    Capture(Box<CaptureArgs>),
    #[command(about = VERIFY_ABOUT, after_long_help = VERIFY_LONG)]
    Verify(VerifyArgs),
    #[command(about = KEXEC_ABOUT, after_long_help = KEXEC_LONG)]
    KexecCapture(KexecArgs),
}

const KEXEC_ABOUT: &str = "\
Capture a disk while it is offline, without a firmware reboot: stop the system cleanly, jump (kexec) \
into a ramdisk built in memory, capture the disk there to a file on another disk or into a Glance \
image, and jump back into the same kernel, its initrd and command line.";

const KEXEC_LONG: &str = "\
Examples:
  ironic-snapshot kexec-capture /dev/sda -o /mnt/usb/node.qcow2
  OS_TOKEN=... ironic-snapshot kexec-capture /dev/sda --glance-endpoint https://cloud:9292 --glance-image ID
  ironic-snapshot kexec-capture --status            # after the return: what happened
  ironic-snapshot kexec-capture --round-trip-only /dev/sda   # there and back, nothing captured
  ironic-snapshot kexec-capture --dry-run /dev/sda -o /mnt/usb/node.qcow2

Run as root on the system whose disk is to be captured. Before anything is stopped it checks that \
kexec can work here (root, kexec in the kernel, sysctl kernel.kexec_load_disabled, kernel lockdown \
and Secure Boot against the kernel image's signature, systemd as init), that SOURCE is a block \
device and OUT is not on it, that the Glance image is queued (the token is fetched now, from the \
flags, OS_* environment or clouds.yaml as for `capture`), builds the ramdisk in memory (this binary \
as /init, the modules of SOURCE's, OUT's and the network interfaces' drivers, the settings and the \
token, the network's addresses, routes and MTU, the running kernel and initrd for the way back; \
nothing on a kernel command line, nothing on a disk) and loads it with kexec_file_load. Only then \
`systemctl kexec` stops the services, unmounts the filesystems and jumps. In the ramdisk the capture \
runs read-only with free space skipped; after --timeout seconds the ramdisk goes back whatever it is \
doing. The outcome is kept in an EFI variable (and beside OUT as OUT.kexec.json): read it with \
--status after the return. With --dry-run it unloads again and prints what it would load as JSON.

Exit codes:
  0    the system is stopping to jump (or, with --dry-run, everything checked out;
       with --status, the last capture succeeded)
  1    other error (a bug: please report it)
  2    usage error: bad option, SOURCE not a block device, kernel or initrd not found
  3    source problem: SOURCE missing or unreadable
  4    output problem: OUT on SOURCE, or it exists (use --force)
  5    Glance or Keystone refused or could not be reached, or the image is not queued
  7    refused, nothing stopped: kexec cannot work here (not root, no kexec in the kernel,
       kernel.kexec_load_disabled=1, lockdown or Secure Boot with an unsigned kernel, no
       systemd, a module missing, or the kernel refused the load); the message says which
  8    --status: the last capture failed (the record says where and why)
  9    --status: no record (no UEFI, or no run since it was written)";

#[derive(clap::Args)]
struct KexecArgs {
    /// Disk to capture: a block device of this machine (opened read-only)
    #[arg(value_name = "SOURCE")]
    source: Option<PathBuf>,

    /// Image file to write, on another disk than SOURCE
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,

    /// How the ramdisk ends: kexec back into the original kernel, reboot
    /// through the firmware, or power off
    #[arg(long = "return", value_enum, default_value_t = ReturnArg::Kexec)]
    return_to: ReturnArg,

    /// Kernel image to load (default: /boot/vmlinuz-RELEASE of the running kernel)
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,

    /// Initrd of the way back (default: /boot/initrd.img-RELEASE)
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,

    /// Seconds the ramdisk may take before it returns regardless
    #[arg(long, value_name = "SECONDS", default_value_t = 900)]
    timeout: u64,

    /// Only jump into the ramdisk and back, capturing nothing
    #[arg(long, conflicts_with_all = ["output", "glance_image"])]
    round_trip_only: bool,

    /// Print the record of the last run (after the return) and exit
    #[arg(long, conflicts_with_all = ["source", "output", "round_trip_only", "dry_run"])]
    status: bool,

    /// Overwrite OUT if it exists
    #[arg(long)]
    force: bool,

    /// Memory of a Glance upload in the ramdisk (see `capture --help`); default: half of what
    /// the ramdisk has available
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_limit)]
    memory_limit: Option<u64>,

    /// Copy free space of known filesystems and swap too, instead of skipping it
    #[arg(long)]
    no_skip_free_space: bool,

    #[command(flatten)]
    cloud: auth::CloudArgs,

    /// Check, build and load the ramdisk, then unload it and print a JSON summary instead of jumping
    #[arg(long)]
    dry_run: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum ReturnArg {
    Kexec,
    Reboot,
    Poweroff,
}

const VERIFY_ABOUT: &str = "\
Check an image file: its digests and size against a capture report or given digests, and for qcow2 its \
structure (self-contained, no unknown features, refcounts consistent, not truncated).";

const VERIFY_LONG: &str = "\
Examples:
  ironic-snapshot verify node.qcow2 --report-json node.json
  ironic-snapshot verify node.qcow2 --sha256 HEX --json
  ironic-snapshot verify --glance-image ID --os-cloud mycloud
  ironic-snapshot verify https://example.org/images/node.qcow2 --sha256 HEX

Prints one verdict line on standard output, OK or FAILED: and the reasons; with --json one object \
instead (ok, format, image_size, virtual_size, sha256, sha512, md5, errors, warnings). Leaked \
clusters (counted but unused, as qemu-img check reports them) are warnings and do not fail.

Exit codes:
  0    the image passed
  1    other error (a bug: please report it)
  2    usage error: bad option or value
  3    input problem: the image or the report is missing, unreadable or not a capture report
  5    Glance, Keystone or the URL's server refused or could not be reached
  6    verification failed: the verdict line says why";

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("image_source").required(true).args(["image", "glance_image"]))]
#[command(mut_arg("glance_image", |arg| arg.help(
    "Check this Glance image instead of a file: its data (downloaded once, metadata by ranged reads) \
     against Glance's size, checksum and os_hash_value and its snapshot_* properties")))]
struct VerifyArgs {
    /// Image file to check (qcow2 by its magic, else raw), or an http(s) URL
    /// of one (the server must answer ranged GETs)
    #[arg(value_name = "FILE")]
    image: Option<PathBuf>,

    /// Expected SHA-256 of the image, hex
    #[arg(long, value_name = "HEX", value_parser = parse_hex)]
    sha256: Option<String>,

    /// Expected SHA-512 of the image, hex (Glance's os_hash_value)
    #[arg(long, value_name = "HEX", value_parser = parse_hex)]
    sha512: Option<String>,

    /// Expected MD5 of the image, hex (Glance's checksum)
    #[arg(long, value_name = "HEX", value_parser = parse_hex)]
    md5: Option<String>,

    /// The capture's report (--report or --json output): digests, sizes and format must match
    #[arg(long, value_name = "REPORT")]
    report_json: Option<PathBuf>,

    /// Print the verdict as one JSON object on standard output
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    cloud: auth::CloudArgs,
}

/// clap value parser for a digest: hex digits only.
fn parse_hex(text: &str) -> Result<String, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err("Give the digest as hexadecimal digits".into())
    }
}

#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("destination").required(true).args(["output", "glance_image"]))]
struct CaptureArgs {
    /// Disk to capture: a block device or a disk image file (opened read-only)
    #[arg(value_name = "SOURCE")]
    source: PathBuf,

    /// Image file to write, or - for standard output
    #[arg(short, long, value_name = "OUT")]
    output: Option<String>,

    /// Image format
    #[arg(long, value_enum, default_value_t = FormatArg::Qcow2)]
    format: FormatArg,

    /// Compression of qcow2 clusters (zlib for consumers older than qemu 5.1)
    #[arg(long, value_enum, default_value_t = CompressionArg::Zstd)]
    compression: CompressionArg,

    /// Compression level (zstd 1-19, default 3; zlib 1-9, default 6)
    #[arg(long, value_name = "N")]
    level: Option<i32>,

    /// qcow2 cluster size, a power of two from 64K to 2M
    #[arg(long, value_name = "SIZE", default_value = "64K", value_parser = parse_size)]
    cluster_size: u64,

    /// Compression threads (0: one per core)
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,

    /// Memory of a capture to -o - or Glance: the image's metadata, the
    /// buffers and, in the rest, compressed data held until the header can go
    /// first; beyond it the disk is read twice instead. `auto`: half of the
    /// memory available now (for a machine doing nothing else)
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_memory_limit)]
    memory_limit: u64,

    /// Copy free space of known filesystems and swap too, instead of skipping it
    #[arg(long)]
    no_skip_free_space: bool,

    /// Overwrite OUT if it exists
    #[arg(long)]
    force: bool,

    /// Print the report as one JSON object on standard output (not with -o -)
    #[arg(long)]
    json: bool,

    /// Write the report as JSON to FILE once the capture succeeded (checked
    /// like OUT before the capture starts; overwritten only with --force)
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,

    /// Draw a progress line on standard error even when it is not a terminal
    #[arg(long, overrides_with = "no_progress")]
    progress: bool,

    /// Never draw a progress line
    #[arg(long)]
    no_progress: bool,

    #[command(flatten)]
    cloud: auth::CloudArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Qcow2,
    Raw,
}

#[derive(Clone, Copy, ValueEnum)]
enum CompressionArg {
    Zstd,
    Zlib,
    None,
}

/// clap value parser for sizes with suffixes (64K, 1G).
fn parse_size(text: &str) -> Result<u64, String> {
    snapshot_core::parse_size(text).map_err(|err| err.to_string())
}

/// clap value parser for the memory limit: a size or `auto`.
fn parse_memory_limit(text: &str) -> Result<u64, String> {
    snapshot_core::parse_memory_limit(text).map_err(|err| err.to_string())
}

fn main() -> ExitCode {
    // In the kexec ramdisk this binary is the kernel's /init.
    if snapshot_kexec::ramdisk::is_ramdisk_init() {
        kexec::ramdisk_main();
    }
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let result = match cli.command {
        Command::KexecCapture(args) => return kexec_capture(&args),
        Command::Capture(args) => capture(*args, cli.quiet),
        Command::Verify(args) => match verify(&args) {
            Ok(true) => Ok(()),
            // The verdict line has been printed: it says why.
            Ok(false) => return ExitCode::from(VERIFY_FAILED),
            Err(err) => Err(err),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            print_error(&err);
            ExitCode::from(exit_code(&err))
        }
    }
}

/// Logs go to standard error; standard output is for data (the image with
/// `-o -`, or the JSON report).
fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only on a terminal: logs piped to a file or a collector stay
    // plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
}

fn capture(args: CaptureArgs, quiet: bool) -> Result<(), Error> {
    let to_stdout = args.output.as_deref() == Some("-");
    if args.json && to_stdout {
        return Err(Error::InvalidOption {
            option: "--json",
            reason:
                "Standard output carries the image with -o -: write the report with --report FILE"
                    .into(),
        });
    }
    let target = match (&args.output, &args.cloud.glance_image) {
        (Some(_), Some(_)) => unreachable!("clap makes -o and --glance-image exclusive"),
        (Some(out), None) if out == "-" => Target::Engine(EngineTarget::Stdout),
        (Some(out), None) => Target::Engine(EngineTarget::File {
            path: PathBuf::from(out),
            force: args.force,
        }),
        (None, Some(id)) => Target::Glance(args.cloud.resolve(id)?),
        (None, None) => unreachable!("clap requires -o or --glance-image"),
    };
    if to_stdout && std::io::stdout().is_terminal() {
        return Err(Error::InvalidOption {
            option: "--output",
            reason:
                "Standard output is a terminal: redirect it to a file or a pipe, or give -o FILE"
                    .into(),
        });
    }
    let cluster_size = u32::try_from(args.cluster_size).map_err(|_| Error::InvalidOption {
        option: "--cluster-size",
        reason: "Use a power of two from 64K to 2M".into(),
    })?;

    // The first SIGHUP, SIGINT or SIGTERM asks the engine to stop and clean
    // up; a second one removes the partial output and exits at once.
    let cancel = Arc::new(AtomicBool::new(false));
    let cancellation = signals::install(Arc::clone(&cancel))?;

    // The report file is checked and reserved before anything is read: a bad
    // path fails in seconds, and the capture cannot end by overwriting the
    // source or the image with JSON.
    let image_path = match &target {
        Target::Engine(EngineTarget::File { path, .. }) => Some(path.clone()),
        _ => None,
    };
    let pending_report = args
        .report
        .as_deref()
        .map(|path| {
            snapshot_core::PendingFile::create(
                path,
                args.force,
                &args.source,
                image_path.as_deref(),
                "--report",
            )
        })
        .transpose()?;

    let options = CaptureOptions {
        format: match args.format {
            FormatArg::Qcow2 => Format::Qcow2,
            FormatArg::Raw => Format::Raw,
        },
        compression: match args.compression {
            CompressionArg::Zstd => Compression::Zstd,
            CompressionArg::Zlib => Compression::Zlib,
            CompressionArg::None => Compression::None,
        },
        level: args.level,
        cluster_size,
        threads: args.threads,
        memory_limit: args.memory_limit,
        skip_free_space: !args.no_skip_free_space,
        cancel: Some(cancel),
    };

    let draw = !args.no_progress && !quiet && (args.progress || std::io::stderr().is_terminal());
    let terminal = draw.then(progress::TerminalProgress::new);
    let progress: &dyn Progress = match &terminal {
        Some(terminal) => terminal,
        None => &NoProgress,
    };
    let result = snapshot_openstack::capture(&args.source, &target, &options, progress);
    if let Some(terminal) = &terminal {
        terminal.clear();
    }
    let report = result?;

    // From here on the image is complete: a signal that came after the
    // engine's last check, or a report that cannot be written, still ends
    // the run with nothing written.
    let finished = (|| {
        if signals::received().is_some() {
            return Err(Error::Cancelled);
        }
        let json = serde_json::to_string(&report)
            .map_err(|err| Error::Internal(format!("Cannot serialise the report: {err}")))?;
        if let Target::Glance(glance) = &target {
            // The same record the service step writes, so that `verify`
            // catches a later edit of any snapshot_* property.
            let value = serde_json::to_value(&report)
                .map_err(|err| Error::Internal(format!("Cannot serialise the report: {err}")))?;
            let source = snapshot_core::provenance::Source {
                device: Some(args.source.display().to_string()),
                ..Default::default()
            };
            let properties = snapshot_core::provenance::properties(&value, &source);
            snapshot_openstack::glance::set_properties(glance, &properties)?;
        }
        if let Some(pending) = pending_report {
            pending.commit(format!("{json}\n").as_bytes())?;
        }
        Ok(json)
    })();
    let json = match finished {
        Ok(json) => json,
        Err(err) => {
            if let Some(path) = &image_path {
                let _held = cancellation.hold();
                remove_finished_image(path);
            }
            return Err(err);
        }
    };
    if args.json {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{json}")
            .and_then(|()| out.flush())
            .map_err(|source| Error::OutputWrite {
                target: "standard output".into(),
                source,
            })?;
    } else if !quiet {
        print_summary(&report);
    }
    Ok(())
}

/// `ironic-snapshot kexec-capture`: its own errors and exit codes (see `KEXEC_LONG`).
fn kexec_capture(args: &KexecArgs) -> ExitCode {
    if args.status {
        return ExitCode::from(kexec::status());
    }
    let glance = match args
        .cloud
        .glance_image
        .as_deref()
        .map(|id| args.cloud.resolve(id))
    {
        None => None,
        Some(Ok(target)) => Some(target),
        Some(Err(err)) => {
            print_error(&err);
            return ExitCode::from(exit_code(&err));
        }
    };
    let request = kexec::Request {
        glance,
        force: args.force,
        memory_limit: args.memory_limit,
        no_skip_free_space: args.no_skip_free_space,
        source: args.source.clone(),
        output: args.output.clone(),
        return_to: match args.return_to {
            ReturnArg::Kexec => snapshot_kexec::settings::Return::Kexec,
            ReturnArg::Reboot => snapshot_kexec::settings::Return::Reboot,
            ReturnArg::Poweroff => snapshot_kexec::settings::Return::Poweroff,
        },
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        timeout: args.timeout,
        round_trip_only: args.round_trip_only,
        dry_run: args.dry_run,
    };
    match kexec::run(&request) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            print_error(&err);
            ExitCode::from(kexec::exit_code(&err, exit_code))
        }
    }
}

/// Exit code of `verify` when the image failed (as capture's failed
/// verification of an upload).
const VERIFY_FAILED: u8 = 6;

/// `ironic-snapshot verify`: the engine checks, this prints the verdict and
/// returns whether the image passed.
fn verify(args: &VerifyArgs) -> Result<bool, Error> {
    let mut expected = match &args.report_json {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|err| Error::ReportInvalid {
                path: path.clone(),
                reason: format!("Cannot read it: {err}"),
            })?;
            snapshot_core::Expected::from_report_json(&text, path)?
        }
        None => snapshot_core::Expected::default(),
    };
    // Digests given as flags win over the report's, and are named as flags.
    let flags = [
        ("--sha256", &args.sha256, &mut expected.sha256),
        ("--sha512", &args.sha512, &mut expected.sha512),
        ("--md5", &args.md5, &mut expected.md5),
    ];
    let mut origin = Vec::new();
    for (flag, given, slot) in flags {
        if let Some(given) = given {
            *slot = Some(given.clone());
            origin.push(flag);
        }
    }
    if expected.origin.is_empty() {
        expected.origin = origin.join("/");
    }
    let verdict = match (&args.image, &args.cloud.glance_image) {
        (Some(path), _) if is_url(path) => {
            let url = path.to_string_lossy();
            let data = snapshot_openstack::glance::open_url(&url)?;
            let body = data.download()?;
            snapshot_core::verify_image(body, &data, &url, &[expected])?
        }
        (Some(path), _) => snapshot_core::verify_file(path, &[expected])?,
        (None, Some(id)) => verify_glance(&args.cloud.resolve(id)?, expected)?,
        (None, None) => unreachable!("clap requires FILE or --glance-image"),
    };
    let text = if args.json {
        serde_json::to_string(&verdict)
            .map_err(|err| Error::Internal(format!("Cannot serialise the verdict: {err}")))?
    } else if verdict.ok {
        "OK".to_owned()
    } else {
        format!("FAILED: {}", verdict.errors.join("; "))
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|source| Error::OutputWrite {
            target: "standard output".into(),
            source,
        })?;
    for warning in &verdict.warnings {
        tracing::warn!("{warning}");
    }
    Ok(verdict.ok)
}

/// An image argument naming an http(s) URL rather than a file.
fn is_url(path: &std::path::Path) -> bool {
    let text = path.to_string_lossy();
    text.starts_with("http://") || text.starts_with("https://")
}

/// Checks a Glance image: its data against the flags' and report's values,
/// Glance's own and the `snapshot_*` properties, which must also agree.
fn verify_glance(
    target: &snapshot_openstack::GlanceTarget,
    expected: snapshot_core::Expected,
) -> Result<snapshot_core::Verification, Error> {
    let image = snapshot_openstack::glance::open_image(target)?;
    let (mut claims, problems) = snapshot_core::glance_expectations(&image.record);
    let status = image.record.get("status").and_then(|v| v.as_str());
    if status != Some("active") {
        return Err(Error::VerificationFailed {
            service: "Glance",
            image_id: target.image_id.clone(),
            detail: format!(
                "status is {}, not active: it holds no complete image",
                status.unwrap_or("unknown")
            ),
        });
    }
    claims.push(expected);
    let body = image.data.download()?;
    let what = format!("glance:{}", target.image_id);
    let mut verdict = snapshot_core::verify_image(body, &image.data, &what, &claims)?;
    verdict.errors.extend(problems);
    verdict.ok = verdict.errors.is_empty();
    Ok(verdict)
}

/// Removes an image the engine completed when the run fails after all.
fn remove_finished_image(path: &std::path::Path) {
    match std::fs::remove_file(path) {
        Ok(()) => tracing::debug!(path = %path.display(), "Removed the image"),
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "Could not remove the image: delete it by hand")
        }
    }
}

/// One human line on standard error when no JSON was asked for (ignoring a
/// terminal that is gone).
fn print_summary(report: &Report) {
    use snapshot_core::format_size;
    let _ = writeln!(
        std::io::stderr().lock(),
        "ironic-snapshot: wrote {} ({}) of a {} disk to {} in {:.1} s; sha256 {}",
        format_size(report.image_size),
        serde_json::to_value(report.format)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        format_size(report.virtual_size),
        report.target,
        report.seconds,
        report.sha256,
    );
}

/// `ironic-snapshot: error: ...` and one `caused by:` line per source.
fn print_error(err: &dyn std::error::Error) {
    let mut text = format!("ironic-snapshot: error: {err}");
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!("\n  caused by: {cause}"));
        source = cause.source();
    }
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// The documented exit code of an error (see `EXIT_CODES`).
fn exit_code(err: &Error) -> u8 {
    match err {
        // Classed as invalid input by the engine (nothing was written), but to
        // a user they are problems with the output.
        Error::OutputExists { .. }
        | Error::OutputOnSource { .. }
        | Error::OutputsCollide { .. } => 4,
        // No image endpoint in the catalog: the upload cannot happen.
        Error::EndpointNotFound { .. } => 5,
        _ => match err.kind() {
            ErrorKind::InvalidInput => 2,
            ErrorKind::Source => 3,
            ErrorKind::Output => 4,
            ErrorKind::Upload => 5,
            ErrorKind::Verification => 6,
            ErrorKind::Cancelled => signals::received().map_or(130, signals::exit_code),
            _ => 1,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(&Error::InvalidSize { value: "x".into() }), 2);
        assert_eq!(exit_code(&Error::OutputExists { path: "o".into() }), 4);
        assert_eq!(exit_code(&Error::SourceNotFound { path: "s".into() }), 3);
        assert_eq!(exit_code(&Error::Cancelled), 130);
        assert_eq!(
            exit_code(&Error::VerificationFailed {
                service: "Glance",
                image_id: "i".into(),
                detail: "d".into()
            }),
            6
        );
        assert_eq!(exit_code(&Error::Internal("x".into())), 1);
    }

    #[test]
    fn kexec_exit_codes() {
        use snapshot_kexec::KexecError;
        let code = |err: KexecError| kexec::exit_code(&err.into(), exit_code);
        assert_eq!(code(KexecError::NotRoot { euid: 1000 }), 7);
        assert_eq!(code(KexecError::KexecDisabled), 7);
        assert_eq!(
            code(KexecError::BootFileNotFound {
                what: "image",
                tried: vec![],
                option: "--kernel"
            }),
            2
        );
        let source = kexec::KexecCommandError::Capture(Error::SourceNotFound { path: "s".into() });
        assert_eq!(kexec::exit_code(&source, exit_code), 3);
        assert!(
            Cli::try_parse_from(["ironic-snapshot", "kexec-capture", "--return", "sleep"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["ironic-snapshot", "kexec-capture", "--status", "/dev/sda"])
                .is_err()
        );
        assert!(
            Cli::try_parse_from([
                "ironic-snapshot",
                "kexec-capture",
                "/dev/sda",
                "--glance-image",
                "i",
                "--return",
                "poweroff"
            ])
            .is_ok()
        );
    }

    #[test]
    fn output_and_glance_are_exclusive() {
        assert!(
            Cli::try_parse_from([
                "ironic-snapshot",
                "capture",
                "d",
                "-o",
                "x",
                "--glance-image",
                "i"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["ironic-snapshot", "capture", "d"]).is_err());
        assert!(
            Cli::try_parse_from(["ironic-snapshot", "capture", "d", "--glance-image", "i"]).is_ok()
        );
    }
}
