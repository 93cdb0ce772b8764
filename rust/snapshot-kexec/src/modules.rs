//! Which kernel modules the running system uses for a device, with their dependencies.
//!
//! A device's drivers are found by walking its sysfs path up to the root: every
//! level bound to a driver has a `driver` link, and a driver built as a module
//! has a `driver/module` link naming it (`virtio_blk` for the disk, then
//! `virtio_pci` for the PCI function under it). `modules.dep` of the running
//! kernel gives each module's file and what it needs; the result lists files
//! with dependencies first, the order they must be loaded in.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{KexecError, Result};

/// A module's canonical name: its file name without `.ko[.xz|.zst|.gz]`,
/// dashes as underscores (the kernel treats both alike).
pub fn module_name(file: &str) -> String {
    let base = file.rsplit('/').next().unwrap_or(file);
    let stem = base.find(".ko").map_or(base, |end| &base[..end]);
    stem.replace('-', "_")
}

/// Names of the modules driving `device_dir` (a sysfs device folder) and its
/// parents, nearest first. Built-in drivers have no module and are left out.
pub fn device_modules(device_dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let mut dir = fs::canonicalize(device_dir).ok();
    while let Some(here) = dir {
        if let Ok(module) = fs::read_link(here.join("driver").join("module")) {
            if let Some(name) = module.file_name().and_then(|n| n.to_str()) {
                let name = module_name(name);
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        // /sys/devices is the top of every device path.
        if here.file_name().is_some_and(|n| n == "devices") {
            break;
        }
        dir = here.parent().map(Path::to_owned);
    }
    names
}

/// The sysfs device folder of block device `name` (`vda`, `sda2`: a
/// partition resolves to its disk, whose driver it shares).
pub fn block_device_dir(sysfs: &Path, name: &str) -> Result<PathBuf> {
    let class = sysfs.join("class/block").join(name);
    if !class.exists() {
        return Err(KexecError::DeviceNotFound {
            device: name.to_owned(),
            path: class,
        });
    }
    let mut dir = fs::canonicalize(&class).map_err(|source| KexecError::Read {
        path: class.clone(),
        what: "the disk's sysfs entry".into(),
        source,
    })?;
    if dir.join("partition").exists() {
        dir.pop();
    }
    Ok(dir.join("device"))
}

/// The sysfs device folder of network interface `name`.
pub fn net_device_dir(sysfs: &Path, name: &str) -> Result<PathBuf> {
    let dir = sysfs.join("class/net").join(name).join("device");
    if !dir.exists() {
        return Err(KexecError::DeviceNotFound {
            device: name.to_owned(),
            path: dir,
        });
    }
    Ok(dir)
}

/// The module index of one kernel: `modules.dep` and `modules.builtin`.
#[derive(Debug, Clone)]
pub struct ModuleIndex {
    /// `/lib/modules/<release>`.
    pub dir: PathBuf,
    /// Module name -> (file relative to `dir`, names it depends on).
    deps: BTreeMap<String, (String, Vec<String>)>,
    /// Names of modules built into the kernel.
    builtin: BTreeSet<String>,
}

impl ModuleIndex {
    /// Reads the index in `dir` (`/lib/modules/$(uname -r)`).
    pub fn load(dir: &Path) -> Result<ModuleIndex> {
        let dep_path = dir.join("modules.dep");
        let text = fs::read_to_string(&dep_path).map_err(|source| KexecError::Read {
            path: dep_path.clone(),
            what: "the running kernel's module index (install its modules, run depmod)".into(),
            source,
        })?;
        let mut deps = BTreeMap::new();
        for line in text.lines() {
            let Some((file, needs)) = line.split_once(':') else {
                continue;
            };
            let needs = needs.split_whitespace().map(module_name).collect();
            deps.insert(module_name(file), (file.trim().to_owned(), needs));
        }
        // modules.builtin may be absent (old kernels): then nothing is built in.
        let builtin = fs::read_to_string(dir.join("modules.builtin"))
            .map(|text| text.lines().map(module_name).collect())
            .unwrap_or_default();
        Ok(ModuleIndex {
            dir: dir.to_owned(),
            deps,
            builtin,
        })
    }

    /// Whether `name` is built into the kernel (nothing to load).
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&module_name(name))
    }

    /// Files (relative to [`ModuleIndex::dir`]) of `names` and everything
    /// they need, each once, dependencies before the modules needing them.
    /// Built-in names are skipped; an unknown one is an error naming
    /// `needed_for`.
    pub fn resolve(&self, names: &[String], needed_for: &str) -> Result<Vec<String>> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for name in names {
            self.visit(&module_name(name), needed_for, &mut seen, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        needed_for: &str,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if !seen.insert(name.to_owned()) {
            return Ok(());
        }
        let Some((file, needs)) = self.deps.get(name) else {
            if self.is_builtin(name) {
                return Ok(());
            }
            return Err(KexecError::ModuleMissing {
                name: name.to_owned(),
                needed_for: needed_for.to_owned(),
                index: self.dir.join("modules.dep"),
            });
        };
        for need in needs {
            self.visit(need, needed_for, seen, order)?;
        }
        order.push(file.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(dep: &str, builtin: &str) -> (tempfile::TempDir, ModuleIndex) {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("modules.dep"), dep).unwrap();
        fs::write(dir.path().join("modules.builtin"), builtin).unwrap();
        let index = ModuleIndex::load(dir.path()).unwrap();
        (dir, index)
    }

    #[test]
    fn names() {
        assert_eq!(
            module_name("kernel/drivers/block/virtio_blk.ko"),
            "virtio_blk"
        );
        assert_eq!(module_name("kernel/fs/xfs/xfs.ko.xz"), "xfs");
        assert_eq!(module_name("dm-mod.ko.zst"), "dm_mod");
        assert_eq!(module_name("virtio-pci"), "virtio_pci");
    }

    #[test]
    fn dependencies_come_first_once() {
        let (_dir, index) = index(
            "kernel/a.ko.xz: kernel/b.ko.xz kernel/c.ko.xz\n\
             kernel/b.ko.xz: kernel/c.ko.xz\n\
             kernel/c.ko.xz:\n\
             kernel/d-e.ko: kernel/c.ko.xz\n",
            "kernel/drivers/virtio/virtio.ko\n",
        );
        let got = index
            .resolve(&["a".into(), "d_e".into(), "virtio".into()], "the disk")
            .unwrap();
        assert_eq!(
            got,
            [
                "kernel/c.ko.xz",
                "kernel/b.ko.xz",
                "kernel/a.ko.xz",
                "kernel/d-e.ko"
            ]
        );
        let err = index
            .resolve(&["nvme".into()], "disk /dev/nvme0n1")
            .unwrap_err();
        assert!(
            err.to_string().contains("nvme") && err.to_string().contains("nvme0n1"),
            "{err}"
        );
    }

    #[test]
    fn sysfs_walk_finds_every_level() {
        // A fake sysfs: devices/pci/0000:00:02.0/virtio2/block/vda.
        let root = tempfile::tempdir().unwrap();
        let sys = root.path();
        let pci = sys.join("devices/pci0000:00/0000:00:02.0");
        let virtio = pci.join("virtio2");
        let disk = virtio.join("block/vda");
        fs::create_dir_all(disk.join("vda1")).unwrap();
        fs::write(disk.join("vda1/partition"), "1\n").unwrap();
        for (dev, driver, module) in [
            (&virtio, "virtio_blk", Some("virtio_blk")),
            (&pci, "virtio-pci", Some("virtio_pci")),
        ] {
            let drv = sys.join("bus/x/drivers").join(driver);
            fs::create_dir_all(&drv).unwrap();
            if let Some(m) = module {
                fs::create_dir_all(sys.join("module").join(m)).unwrap();
                std::os::unix::fs::symlink(sys.join("module").join(m), drv.join("module")).unwrap();
            }
            std::os::unix::fs::symlink(&drv, dev.join("driver")).unwrap();
        }
        std::os::unix::fs::symlink(&virtio, disk.join("device")).unwrap();
        fs::create_dir_all(sys.join("class/block")).unwrap();
        std::os::unix::fs::symlink(&disk, sys.join("class/block/vda")).unwrap();
        std::os::unix::fs::symlink(disk.join("vda1"), sys.join("class/block/vda1")).unwrap();

        let dev = block_device_dir(sys, "vda1").unwrap();
        assert_eq!(device_modules(&dev), ["virtio_blk", "virtio_pci"]);
        assert!(matches!(
            block_device_dir(sys, "sdz"),
            Err(KexecError::DeviceNotFound { .. })
        ));
    }
}
