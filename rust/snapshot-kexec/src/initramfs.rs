//! The ramdisk, assembled in memory: this binary as `/init`, the modules, the
//! settings and the way back.
//!
//! Layout of the archive:
//!
//! | path | what |
//! | --- | --- |
//! | `/init` | the running binary (`/proc/self/exe`), static |
//! | `/dev/console` | the node the kernel opens for init's output |
//! | `/modules/<file>` | modules in [`Settings::modules`] order |
//! | `/settings.json` | [`Settings`] |
//! | `/return/vmlinuz`, `/return/initrd.img` | the running kernel and its initrd |
//! | `/etc/...` | `resolv.conf`, `hosts` and the upload's CA bundle, if any |

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::cpio::Writer;
use crate::error::{KexecError, Result};
use crate::settings::{MODULES_DIR, RETURN_INITRD, RETURN_KERNEL, SETTINGS_PATH, Settings};

/// What goes into the ramdisk.
#[derive(Debug, Clone)]
pub struct Contents {
    /// The binary to run as `/init` (normally `/proc/self/exe`).
    pub init: PathBuf,
    /// Module files as absolute paths, in load order.
    pub modules: Vec<PathBuf>,
    /// The running kernel's image (for the way back).
    pub kernel: PathBuf,
    /// The running kernel's initrd (for the way back), if it has one.
    pub initrd: Option<PathBuf>,
    /// More files by their path in the ramdisk (`/etc/resolv.conf`, the CA
    /// bundle), written mode 0600 under folders that exist (`/etc`).
    pub files: Vec<(String, Vec<u8>)>,
}

/// Writes the archive of `contents` with `settings` into `out`; fills
/// [`Settings::modules`] and [`Settings::has_initrd`] from `contents`.
/// Returns `out` and the archive's size.
pub fn build<W: Write>(out: W, contents: &Contents, settings: &Settings) -> Result<(W, u64)> {
    let fail = |what: String| move |source| KexecError::Initramfs { what, source };
    let read = |path: &Path, what: &str| {
        fs::read(path).map_err(|source| KexecError::Read {
            path: path.to_owned(),
            what: what.to_owned(),
            source,
        })
    };
    let mut settings = settings.clone();
    settings.has_initrd = contents.initrd.is_some();
    settings.modules = contents
        .modules
        .iter()
        .map(|m| {
            m.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    let mut w = Writer::new(out);
    for dir in ["/dev", "/proc", "/sys", "/run", "/mnt", "/tmp", "/etc"] {
        w.dir(dir, 0o755).map_err(fail(format!("adding {dir}")))?;
    }
    w.char_device("/dev/console", 0o600, 5, 1)
        .map_err(fail("adding /dev/console".into()))?;
    w.file(
        "/init",
        0o755,
        &read(&contents.init, "this binary, to run as the ramdisk's /init")?,
    )
    .map_err(fail("adding /init".into()))?;
    w.dir(MODULES_DIR, 0o755)
        .map_err(fail("adding the modules folder".into()))?;
    for (path, name) in contents.modules.iter().zip(&settings.modules) {
        let data = read(path, "a kernel module the ramdisk needs")?;
        w.file(&format!("{MODULES_DIR}/{name}"), 0o644, &data)
            .map_err(fail(format!("adding module {name}")))?;
    }
    w.file(
        RETURN_KERNEL,
        0o600,
        &read(&contents.kernel, "the running kernel, for the way back")?,
    )
    .map_err(fail("adding the return kernel".into()))?;
    if let Some(initrd) = &contents.initrd {
        w.file(
            RETURN_INITRD,
            0o600,
            &read(initrd, "the running kernel's initrd, for the way back")?,
        )
        .map_err(fail("adding the return initrd".into()))?;
    }
    for (path, data) in &contents.files {
        w.file(path, 0o600, data)
            .map_err(fail(format!("adding {path}")))?;
    }
    let json = serde_json::to_vec_pretty(&settings).map_err(|err| KexecError::Initramfs {
        what: "serialising the settings".into(),
        source: std::io::Error::other(err),
    })?;
    // 0600: the settings may carry a credential.
    w.file(SETTINGS_PATH, 0o600, &json)
        .map_err(fail("adding the settings".into()))?;
    let size = w.written();
    let out = w.finish().map_err(fail("finishing the archive".into()))?;
    tracing::info!(
        bytes = size,
        modules = settings.modules.len(),
        "ramdisk built in memory"
    );
    Ok((out, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Return;
    use std::process::{Command, Stdio};

    #[test]
    fn archive_holds_everything_and_gnu_cpio_extracts_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str, data: &[u8]| {
            let path = dir.path().join(name);
            fs::write(&path, data).unwrap();
            path
        };
        let contents = Contents {
            init: p("bin", b"\x7fELF static"),
            modules: vec![p("virtio_ring.ko", b"ring"), p("virtio_blk.ko.xz", b"blk")],
            kernel: p("vmlinuz", b"MZ kernel"),
            initrd: Some(p("initrd", b"initrd data")),
            files: vec![("/etc/hosts".into(), b"127.0.0.1 localhost\n".to_vec())],
        };
        let settings = Settings {
            version: "t".into(),
            return_to: Return::Kexec,
            cmdline: "root=x".into(),
            release: "r".into(),
            has_initrd: false,
            modules: vec![],
            timeout_seconds: 60,
            round_trip_only: true,
            source_device: None,
            network: None,
            output: None,
            glance: None,
            capture: Default::default(),
        };
        let (archive, size) = build(Vec::new(), &contents, &settings).unwrap();
        assert!(archive.len() as u64 > size);
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();
        let mut child = Command::new("cpio")
            .args(["-i", "--quiet", "-d", "-H", "newc", "-f", "dev/console"])
            .current_dir(&out)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(fs::read(out.join("init")).unwrap(), b"\x7fELF static");
        assert_eq!(
            fs::read(out.join("modules/virtio_blk.ko.xz")).unwrap(),
            b"blk"
        );
        assert_eq!(fs::read(out.join("return/vmlinuz")).unwrap(), b"MZ kernel");
        assert_eq!(
            fs::read(out.join("return/initrd.img")).unwrap(),
            b"initrd data"
        );
        assert_eq!(
            fs::read(out.join("etc/hosts")).unwrap(),
            b"127.0.0.1 localhost\n"
        );
        let back = Settings::read(&out.join("settings.json")).unwrap();
        assert_eq!(back.modules, ["virtio_ring.ko", "virtio_blk.ko.xz"]);
        assert!(back.has_initrd);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(out.join("settings.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
