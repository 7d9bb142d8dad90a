//! Real-kernel test harness: boots Debian's 6.12 kernel (bcache as a module) in
//! QEMU (TCG) from a per-run initramfs, runs a shell scenario in the guest with
//! the project's `bcache` binary, and hands the results back to the test.
//!
//! ```ignore
//! let scratch = vm::Scratch::new();
//! let img = scratch.image("backing.img", 64 << 20);
//! let out = Vm::new().disk(&img).run(r#"
//!     register /dev/vda
//!     emit bdev "$(bcache_of /dev/vda)"
//! "#);
//! assert_eq!(out.value("bdev"), Some("/dev/bcache0"));
//! ```
//!
//! Assets come from `tests/vm/fetch-assets.sh` (cache dir `$BCACHE_VM_CACHE`, default
//! `$HOME/.cache/bcache-tools-vm`). Without them `Vm::new()` panics: never a silent skip.
//!
//! Guest layout: busybox applets in /bin, /sbin, /usr/bin, /usr/sbin; our binary at
//! /usr/sbin/bcache with the multi-call names (make-bcache, bcache-super-show,
//! probe-bcache, bcache-register) as symlinks in /usr/sbin and /lib/udev; host tools
//! asked for with [`Vm::host_binary`] in /usr/local/bin (first in PATH), except the
//! C bcache-tools, which go to /opt/c-tools/NAME (not in PATH) so tests can compare.
//! Disks are /dev/vda, /dev/vdb, ... in the order they were added.
//!
//! The scenario runs with `set -e` after sourcing tests/vm/guest-lib.sh (helpers:
//! emit, begin/end/section, check/check_fails/check_eq, wait_for/wait_until/wait_gone,
//! register, bcache_of, kmsg_mark/dmesg_since/dmesg_section, power_cut, fail).
//! Its stdout and stderr reach the host on their own virtio-serial ports, apart from
//! the kernel console; /init sends the full dmesg and the exit status on a third port.
//!
//! Modules: virtio_blk, dm_mod, loop and bcache load at boot ([`DEFAULT_MODULES`]);
//! ext4 and xfs (seconds each under TCG) with [`Vm::module`] or `load_module` in the guest.
//! More in tests/vm/README.md.
//!
//! Debian userland guests ([`Vm::debian`]): the host's / (read-only, virtio-9p) under an
//! overlay whose upper layer is on a persistent ext4 system disk ([`system_disk`]), the
//! kernel package's whole module tree, systemd as PID 1 (or udevd by hand,
//! [`DebianInit::Udevd`]) with a real systemd-udevd and the project's udev rule; every
//! `run` is a reboot on the same disks; `power_cut` is a hard kill. See tests/vm/README.md.
//!
//! Environment: BCACHE_VM_CACHE (assets), BCACHE_VM_TIMEOUT (seconds, default 300),
//! BCACHE_VM_QEMU (qemu-system-x86_64 to use), BCACHE_VM_KEEP=1 (keep each run's
//! directory: initramfs, logs, QEMU command line), BCACHE_VM_TRACE=0 (no `set -x`),
//! BCACHE_VM_RETRY_LOG (where boots made again after a crash are listed, [`retry_log`]).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

const GUEST_INIT: &str = include_str!("../vm/init.sh");
const GUEST_RUN_SCENARIO: &str = include_str!("../vm/run-scenario.sh");
const GUEST_LIB: &str = include_str!("../vm/guest-lib.sh");
const GUEST_DEBIAN_STAGE1: &str = include_str!("../vm/debian-stage1.sh");
const GUEST_DEBIAN_GUEST: &str = include_str!("../vm/guest.sh");
/// The project's udev rule, installed in Debian userland guests like the README says.
const PROJECT_UDEV_RULE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/udev/69-bcache.rules");

/// Names under which our multi-call binary is installed in the guest (besides `bcache`).
pub const MULTICALL_NAMES: &[&str] = &["make-bcache", "bcache-super-show", "probe-bcache", "bcache-register"];
/// Where the C bcache-tools go in the guest when asked for with [`Vm::host_binary`].
pub const C_TOOLS_DIR: &str = "/opt/c-tools";
/// Where other host binaries go in the guest (first in PATH).
pub const HOST_BIN_DIR: &str = "/usr/local/bin";
/// Our binary in the guest.
pub const GUEST_BCACHE: &str = "/usr/sbin/bcache";

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
const PORTS: &[&str] = &["out", "err", "meta"];
const QBOOT: &str = "/usr/share/qemu/qboot.rom";

/// virtio-blk serial of the system disk of a Debian userland guest.
pub const SYSTEM_DISK_SERIAL: &str = "bcache-vm-system";
/// Default size of a system disk made by [`system_disk`].
pub const SYSTEM_DISK_SIZE: u64 = 1 << 30;
/// Modules a Debian guest's kernel refuses (`module_blacklist=`): drivers for the
/// emulated PC's devices and CPU features that udev's coldplug would load, at a cost
/// of seconds under TCG, and that no test uses.
pub const DEBIAN_MODULE_BLACKLIST: &[&str] = &[
    "kvm", "kvm_amd", "kvm_intel", "ccp", "floppy", "pcspkr", "psmouse", "serio_raw", "evdev", "i2c_piix4", "ata_piix", "ata_generic",
    "libata", "qemu_fw_cfg", "aesni_intel", "ghash_clmulni_intel", "polyval_clmulni", "sha1_ssse3", "sha256_ssse3", "sha512_ssse3",
    "crc32_pclmul", "crct10dif_pclmul", "drm", "bochs", "button", "joydev",
];
/// Modules the first stage of a Debian userland guest loads (from the initramfs).
const DEBIAN_STAGE1_MODULES: &[&str] = &["virtio_blk", "9p", "9pnet_virtio", "overlay", "ext4"];
/// What `bcache-vm.target` (the default unit of a systemd guest) wants besides the
/// scenario; [`Vm::boot_unit`] adds more.
/// Not sysinit.target: systemd-tmpfiles-setup alone takes minutes under TCG there
/// (it walks and copies up the host's /var through 9p).
pub const DEBIAN_BOOT_UNITS: &[&str] =
    &["systemd-journald.service", "systemd-modules-load.service", "systemd-udevd.service", "systemd-udev-trigger.service", "local-fs.target"];

/// The cache directory of tests/vm/fetch-assets.sh.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BCACHE_VM_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/bcache-tools-vm")
}

/// Kernel and modules fetched by tests/vm/fetch-assets.sh.
#[derive(Clone, Debug)]
pub struct Assets {
    pub dir: PathBuf,
    /// vmlinux if fetch-assets.sh could unpack it, else vmlinuz.
    pub kernel: PathBuf,
    /// All fetched modules, in an order that insmod accepts.
    pub modules: Vec<Module>,
    /// `uname -r` of the guest, e.g. "6.12.117+deb12-amd64".
    pub release: String,
    /// The kernel package's whole module tree with depmod's indexes
    /// (`lib-modules/RELEASE` in the cache), for Debian userland guests.
    pub module_tree: PathBuf,
}

/// A fetched kernel module.
#[derive(Clone, Debug)]
pub struct Module {
    /// Module name as the kernel spells it ('_', not '-'), e.g. "dm_mod".
    pub name: String,
    pub path: PathBuf,
    /// Names of the modules it needs (its `depends=`).
    pub depends: Vec<String>,
    /// Names or aliases it wants loaded first (`softdep=pre: ...`, e.g. "crypto-crc32c":
    /// libcrc32c fails with ENOENT without a crc32c implementation).
    pub softdeps: Vec<String>,
    /// Its `alias=` entries.
    pub aliases: Vec<String>,
}

/// Modules loaded at every boot; the other fetched ones (ext4, xfs, ... which cost
/// seconds to load under TCG) with [`Vm::module`] or the guest's `load_module NAME`.
pub const DEFAULT_MODULES: &[&str] = &["virtio_blk", "dm_mod", "loop", "bcache"];

fn module_name(s: &str) -> String {
    s.trim_end_matches(".ko").replace('-', "_")
}

/// The .modinfo section of an ELF64 little-endian module (the whole file if it
/// cannot be found: the entries are NUL-separated strings either way).
fn modinfo_section(ko: &[u8]) -> &[u8] {
    let u16_at = |o: usize| ko.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |o: usize| ko.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize);
    let u64_at = |o: usize| ko.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
    let find = || -> Option<&[u8]> {
        if ko.get(0..6)? != b"\x7fELF\x02\x01" {
            return None;
        }
        let (shoff, shentsize, shnum, shstrndx) = (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
        let sh = |i: usize| shoff + i * shentsize;
        let strtab = u64_at(sh(shstrndx) + 0x18)?;
        for i in 0..shnum {
            let name_at = strtab + u32_at(sh(i))?;
            if ko.get(name_at..name_at + 9)? == b".modinfo\0" {
                let (off, size) = (u64_at(sh(i) + 0x18)?, u64_at(sh(i) + 0x20)?);
                return ko.get(off..off + size);
            }
        }
        None
    };
    find().unwrap_or(ko)
}

/// The values of `key=` entries in a module's .modinfo section.
fn modinfo(ko: &[u8], key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    modinfo_section(ko)
        .split(|&b| b == 0)
        .filter_map(|e| e.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn parse_module(path: PathBuf, ko: &[u8]) -> Module {
    let name = module_name(&path.file_name().unwrap().to_string_lossy());
    let depends = modinfo(ko, "depends").iter().flat_map(|d| d.split(',')).filter(|s| !s.is_empty()).map(module_name).collect();
    let mut softdeps = Vec::new();
    for sd in modinfo(ko, "softdep") {
        let mut pre = false;
        for tok in sd.split_whitespace() {
            match tok {
                "pre:" => pre = true,
                "post:" => pre = false,
                t if pre => softdeps.push(t.to_string()),
                _ => {}
            }
        }
    }
    Module { name, path, depends, softdeps, aliases: modinfo(ko, "alias") }
}

impl Assets {
    pub fn find() -> Result<Assets, String> {
        let dir = cache_dir();
        let hint = format!(
            "the VM test assets are missing or incomplete in {} (set BCACHE_VM_CACHE to move it): \
             run tests/vm/fetch-assets.sh as root (needs apt-get update, and qemu-system-x86 \
             busybox-static cpio xz-utils zstd installed)",
            dir.display()
        );
        let release = fs::read_to_string(dir.join("kernel-release")).map_err(|e| format!("{hint}: kernel-release: {e}"))?;
        let release = release.trim().to_string();
        // vmlinux (uncompressed, PVH entry) boots faster than the bzImage
        let kernel = [dir.join("vmlinux"), dir.join("vmlinuz")].into_iter().find(|k| k.is_file()).ok_or_else(|| format!("{hint}: no vmlinuz"))?;
        let order = fs::read_to_string(dir.join("modules/load-order")).map_err(|e| format!("{hint}: modules/load-order: {e}"))?;
        let mut modules = Vec::new();
        for file in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let path = dir.join("modules").join(file);
            let ko = fs::read(&path).map_err(|e| format!("{hint}: modules/{file}: {e}"))?;
            modules.push(parse_module(path, &ko));
        }
        let module_tree = dir.join("lib-modules");
        Ok(Assets { dir, kernel, modules, release, module_tree })
    }

    /// The fetched module called (or aliased) `name`.
    pub fn module(&self, name: &str) -> Option<&Module> {
        let n = module_name(name);
        self.modules.iter().find(|m| m.name == n).or_else(|| self.modules.iter().find(|m| m.aliases.iter().any(|a| a == name)))
    }

    /// What `m` needs loaded before it: its dependencies and the soft
    /// dependencies that a fetched module provides.
    pub fn prerequisites(&self, m: &Module) -> Vec<&Module> {
        let mut pre: Vec<&Module> = m
            .depends
            .iter()
            .map(|d| self.module(d).unwrap_or_else(|| panic!("module {} needs {d}, which was not fetched (see WANTED in tests/vm/fetch-assets.sh)", m.name)))
            .collect();
        pre.extend(m.softdeps.iter().filter_map(|s| self.module(s)));
        pre
    }

    /// `names` and everything they need, in an order insmod accepts. Panics on an
    /// unknown name.
    pub fn module_closure(&self, names: &[String]) -> Vec<&Module> {
        fn visit<'a>(a: &'a Assets, m: &'a Module, out: &mut Vec<&'a Module>, stack: &mut Vec<String>) {
            if out.iter().any(|o| o.name == m.name) {
                return;
            }
            assert!(!stack.contains(&m.name), "module dependency cycle through {}", m.name);
            stack.push(m.name.clone());
            for p in a.prerequisites(m) {
                visit(a, p, out, stack);
            }
            stack.pop();
            out.push(m);
        }
        let mut out = Vec::new();
        for n in names {
            let m = self.module(n).unwrap_or_else(|| {
                panic!(
                    "module {n} is not among the fetched ones ({}); add it to WANTED in tests/vm/fetch-assets.sh and run that with --refresh",
                    self.modules.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(" ")
                )
            });
            visit(self, m, &mut out, &mut Vec::new());
        }
        out
    }
}

/// Guest device name of the `index`-th disk (0 → "/dev/vda").
pub fn disk_dev(index: usize) -> String {
    assert!(index < 26, "at most 26 disks");
    format!("/dev/vd{}", (b'a' + index as u8) as char)
}

/// A scratch directory for disk images and other files of one test; removed on drop
/// unless BCACHE_VM_KEEP=1 (then its path is printed).
pub struct Scratch {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::Builder::new().prefix("bcache-vm-scratch-").tempdir().expect("create scratch dir");
        let path = dir.path().to_path_buf();
        Scratch { dir: Some(dir), path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A sparse file of `size` bytes (all zero) named `name` in this directory.
    pub fn image(&self, name: &str, size: u64) -> PathBuf {
        sparse_image(&self.path.join(name), size)
    }

    /// The system disk `name` in this directory ([`system_disk`]: made on the first call).
    pub fn system_disk(&self, name: &str) -> PathBuf {
        system_disk(&self.path.join(name))
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if keep_runs() {
            if let Some(dir) = self.dir.take() {
                eprintln!("vm: keeping scratch dir {}", dir.keep().display());
            }
        }
    }
}

/// A system disk for [`Vm::debian`]: an ext4 file system (label bcache-vm-sys) in a
/// sparse file of [`SYSTEM_DISK_SIZE`] bytes at `path`, holding the guest's root
/// overlay upper layer (what a boot changes in /etc, /var, ...). Made once: an existing
/// file is kept as is, so call this once per test and boot every `run` on it.
pub fn system_disk(path: &Path) -> PathBuf {
    if path.exists() {
        return path.to_path_buf();
    }
    sparse_image(path, SYSTEM_DISK_SIZE);
    // inode tables and journal zeroed here, not by the guest's ext4lazyinit under TCG
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "bcache-vm-sys", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run mkfs.ext4 (apt-get install e2fsprogs): {e}"));
    assert!(out.status.success(), "mkfs.ext4 {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    path.to_path_buf()
}

/// Create (or truncate to zero and regrow) a sparse file of `size` bytes at `path`.
pub fn sparse_image(path: &Path, size: u64) -> PathBuf {
    let f = fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.set_len(size).unwrap_or_else(|e| panic!("set_len {}: {e}", path.display()));
    path.to_path_buf()
}

/// Read `len` bytes at `offset` of a host file (e.g. a disk image after a run).
pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).unwrap_or_else(|e| panic!("read {} at {offset}: {e}", path.display()));
    buf
}

/// Options of one virtio disk.
#[derive(Clone, Debug, Default)]
pub struct DiskOptions {
    /// virtio-blk serial (guest: /sys/block/vdX/serial), at most 20 bytes.
    pub serial: Option<String>,
    pub logical_block_size: Option<u32>,
    pub physical_block_size: Option<u32>,
    pub read_only: bool,
}

#[derive(Clone, Debug)]
struct Disk {
    path: PathBuf,
    opts: DiskOptions,
}

/// What PID 1 of a Debian userland guest is (see tests/vm/README.md for the figures).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DebianInit {
    /// systemd, with `bcache-vm.target` as its default unit: [`DEBIAN_BOOT_UNITS`],
    /// the units given with [`Vm::boot_unit`], and the scenario's service.
    Systemd,
    /// guest.sh: `systemd-udevd --daemon`, `udevadm trigger --action=add`, settle.
    Udevd,
}

#[derive(Clone, Debug)]
enum Userland {
    Busybox,
    Debian { system_disk: PathBuf, init: DebianInit },
}

#[derive(Clone, Debug)]
enum Source {
    Host(PathBuf),
    Bytes(Vec<u8>),
}

/// A guest to boot: the builder. `run` can be called several times (same disks,
/// fresh initramfs and RAM each time).
#[derive(Clone, Debug)]
pub struct Vm {
    assets: Assets,
    bcache_binary: Option<PathBuf>,
    disks: Vec<Disk>,
    /// guest path → host binary (libs are added at build time)
    binaries: Vec<(String, PathBuf)>,
    files: Vec<(String, Source, u32)>,
    env: Vec<(String, String)>,
    memory_mib: u32,
    cpus: u32,
    timeout: Duration,
    trace: bool,
    kernel_args: Vec<String>,
    modules: Vec<String>,
    userland: Userland,
    /// Modules asked for with `module` (a Debian guest loads only these at boot).
    extra_modules: Vec<String>,
    /// Module name → host .ko replacing the fetched one.
    module_overrides: Vec<(String, PathBuf)>,
    symlinks: Vec<(String, String)>,
    boot_units: Vec<String>,
    /// An initramfs made elsewhere (e.g. by mkinitramfs in a guest), booted as is.
    initrd: Option<PathBuf>,
}

impl Default for Vm {
    fn default() -> Self {
        Vm::new()
    }
}

impl Vm {
    /// A guest with the fetched kernel and our `bcache` binary (the cargo-built one,
    /// when compiled as part of an integration test). Panics, naming
    /// tests/vm/fetch-assets.sh, when the assets are missing.
    pub fn new() -> Vm {
        let assets = Assets::find().unwrap_or_else(|e| panic!("{e}"));
        let timeout = match std::env::var("BCACHE_VM_TIMEOUT") {
            Ok(s) => Duration::from_secs(s.trim().parse().unwrap_or_else(|_| panic!("BCACHE_VM_TIMEOUT={s}: not a number of seconds"))),
            Err(_) => DEFAULT_TIMEOUT,
        };
        Vm {
            assets,
            bcache_binary: option_env!("CARGO_BIN_EXE_bcache").map(PathBuf::from),
            disks: Vec::new(),
            binaries: Vec::new(),
            files: Vec::new(),
            env: Vec::new(),
            memory_mib: 1024,
            cpus: 2,
            timeout,
            trace: std::env::var("BCACHE_VM_TRACE").map(|v| v != "0").unwrap_or(true),
            kernel_args: Vec::new(),
            modules: DEFAULT_MODULES.iter().map(|s| s.to_string()).collect(),
            userland: Userland::Busybox,
            extra_modules: Vec::new(),
            module_overrides: Vec::new(),
            symlinks: Vec::new(),
            boot_units: Vec::new(),
            initrd: None,
        }
    }

    /// Boot this initramfs (e.g. one mkinitramfs or dracut made in a guest) instead of
    /// one built by the harness; its /init is the guest's, `kernel_arg` gives it
    /// `root=` and the like (`rdinit=/init`, `console=ttyS0`, `quiet` and `panic=-1`
    /// are there as always: a panic, or initramfs-tools giving up with panic=, ends
    /// QEMU). Nothing of the harness is in the guest: run it with [`Vm::boot`]; the
    /// ports out, err and meta are there for what the guest's own init writes
    /// (`@@STATUS N` on meta, or on the console, ends a run as usual).
    pub fn boot_initrd(&mut self, initrd: &Path) -> &mut Self {
        assert!(initrd.is_file(), "initramfs {} does not exist", initrd.display());
        assert!(!self.is_debian(), "boot_initrd: not with a Debian userland guest");
        self.initrd = Some(initrd.to_path_buf());
        self
    }

    /// Boot the initramfs given with [`Vm::boot_initrd`] and return whatever happened
    /// (status None if the guest never reported one). Panics only if QEMU cannot start
    /// or the boot times out.
    pub fn boot(&self) -> VmOutput {
        assert!(self.initrd.is_some(), "boot: no initramfs given (Vm::boot_initrd)");
        self.run_unchecked("")
    }

    /// A guest with a Debian userland: `Vm::new().userland_debian(system_disk)`.
    pub fn debian(system_disk: &Path) -> Vm {
        let mut vm = Vm::new();
        vm.userland_debian(system_disk);
        vm
    }

    /// Boot into a Debian userland instead of busybox: the host's / (read-only, over
    /// virtio-9p) under an overlay whose upper layer is on `system_disk` (an ext4 image
    /// made by [`system_disk`]; what a boot changes under /etc, /var, ... is there at the
    /// next `run` on the same image), the kernel package's whole module tree at
    /// /lib/modules/RELEASE (modprobe and udev load modules on demand), and systemd as
    /// PID 1 with a real systemd-udevd and the project's installed udev rule
    /// (udev/69-bcache.rules as /usr/lib/udev/rules.d/69-bcache.rules, our binary as
    /// /usr/sbin/bcache with its multi-call links). The system disk is the last virtio
    /// disk (serial [`SYSTEM_DISK_SERIAL`], `$VM_SYSTEM_DISK` in the guest), after the
    /// test's /dev/vda, /dev/vdb, ... The scenario runs under bash once `udevadm
    /// settle` returns; then the guest powers off cleanly (`systemctl poweroff`), unless
    /// the scenario calls `power_cut`. More in tests/vm/README.md.
    pub fn userland_debian(&mut self, system_disk: &Path) -> &mut Self {
        assert!(system_disk.is_file(), "system disk {} does not exist (make it with vm::system_disk)", system_disk.display());
        assert!(
            self.assets.module_tree.join(&self.assets.release).join("modules.dep.bin").is_file(),
            "no module tree in {} for a Debian userland guest: run tests/vm/fetch-assets.sh",
            self.assets.module_tree.display()
        );
        self.userland = Userland::Debian { system_disk: system_disk.to_path_buf(), init: DebianInit::Systemd };
        self
    }

    /// PID 1 of a Debian userland guest (default [`DebianInit::Systemd`]).
    pub fn debian_init(&mut self, init: DebianInit) -> &mut Self {
        match &mut self.userland {
            Userland::Debian { init: i, .. } => *i = init,
            Userland::Busybox => panic!("debian_init: not a Debian userland guest (Vm::debian)"),
        }
        self
    }

    /// Under systemd, start this unit at boot too (bcache-vm.target wants it), e.g. a
    /// service the test installed with `file`.
    pub fn boot_unit(&mut self, unit: &str) -> &mut Self {
        self.boot_units.push(unit.to_string());
        self
    }

    /// A symbolic link at `guest_path` to `target` (e.g. enabling a unit in
    /// /etc/systemd/system/*.wants).
    pub fn symlink(&mut self, guest_path: &str, target: &str) -> &mut Self {
        self.symlinks.push((guest_path.to_string(), target.to_string()));
        self
    }

    /// Replace the fetched module of the same name (file name without .ko, e.g. the
    /// patched bcache.ko) by this host file. Busybox guest: it is /lib/modules/NAME.ko,
    /// what /init and load_module insmod. Debian guest: it is
    /// /lib/modules/RELEASE/updates/NAME.ko, with depmod's indexes made again (on the
    /// host, cached under the cargo target tmp dir), so modprobe and udev load it
    /// instead of the stock one. `host_file(ko, "/lib/modules/NAME.ko")` does the same.
    pub fn module_override(&mut self, ko: &Path) -> &mut Self {
        let name = module_name(&ko.file_name().unwrap_or_else(|| panic!("bad module path {}", ko.display())).to_string_lossy());
        let m = self.assets.module(&name).unwrap_or_else(|| panic!("module_override: {name} is not a fetched module"));
        let file = m.path.file_name().unwrap().to_string_lossy().into_owned();
        self.host_file(ko, &format!("/lib/modules/{file}"))
    }

    fn is_debian(&self) -> bool {
        matches!(self.userland, Userland::Debian { .. })
    }

    pub fn assets(&self) -> &Assets {
        &self.assets
    }

    /// Use this file as the guest's `bcache` binary instead of the cargo-built one.
    pub fn bcache_binary(&mut self, path: &Path) -> &mut Self {
        self.bcache_binary = Some(path.to_path_buf());
        self
    }

    /// Attach the next virtio disk (/dev/vda, /dev/vdb, ...) backed by a raw host file.
    pub fn disk(&mut self, path: &Path) -> &mut Self {
        self.disk_with(path, DiskOptions::default())
    }

    /// Like `disk`, with logical and physical block size `lbs` bytes.
    pub fn disk_with_block_size(&mut self, path: &Path, lbs: u32) -> &mut Self {
        self.disk_with(path, DiskOptions { logical_block_size: Some(lbs), physical_block_size: Some(lbs), ..Default::default() })
    }

    pub fn disk_with(&mut self, path: &Path, opts: DiskOptions) -> &mut Self {
        assert!(self.disks.len() < 26, "at most 26 disks");
        assert!(path.exists(), "disk image {} does not exist", path.display());
        if let Some(s) = &opts.serial {
            assert!(s.len() <= 20 && !s.contains(','), "bad virtio-blk serial {s:?}");
        }
        self.disks.push(Disk { path: path.to_path_buf(), opts });
        self
    }

    /// Guest device of the disk added as number `index` (0-based).
    pub fn dev(&self, index: usize) -> String {
        assert!(index < self.disks.len(), "no disk {index}");
        disk_dev(index)
    }

    /// Copy a host program (looked up in PATH, the sbin dirs and /lib/udev, or an
    /// absolute path) and its shared libraries into the guest: C bcache-tools names
    /// go to /opt/c-tools/NAME, anything else to /usr/local/bin/NAME.
    pub fn host_binary(&mut self, name: &str) -> &mut Self {
        let host = find_host_program(name).unwrap_or_else(|| panic!("host program {name} not found (is its package installed?)"));
        let base = Path::new(name).file_name().unwrap().to_string_lossy().into_owned();
        let dir = if MULTICALL_NAMES.contains(&base.as_str()) { C_TOOLS_DIR } else { HOST_BIN_DIR };
        self.binaries.push((format!("{dir}/{base}"), host));
        self
    }

    /// The C bcache-tools (make-bcache, bcache-super-show, probe-bcache,
    /// bcache-register) into /opt/c-tools.
    pub fn c_bcache_tools(&mut self) -> &mut Self {
        for name in MULTICALL_NAMES {
            self.host_binary(name);
        }
        self
    }

    /// Put a file with these contents at `guest_path` (mode 0644, or 0755 if `exec`).
    pub fn file(&mut self, guest_path: &str, contents: impl Into<Vec<u8>>, exec: bool) -> &mut Self {
        self.files.push((guest_path.to_string(), Source::Bytes(contents.into()), if exec { 0o755 } else { 0o644 }));
        self
    }

    /// Copy a host file to `guest_path`, keeping its permission bits.
    pub fn host_file(&mut self, host: &Path, guest_path: &str) -> &mut Self {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(host).unwrap_or_else(|e| panic!("{}: {e}", host.display())).permissions().mode() & 0o7777;
        self.files.push((guest_path.to_string(), Source::Host(host.to_path_buf()), mode));
        self
    }

    /// Export a variable to the scenario.
    pub fn env(&mut self, key: &str, value: &str) -> &mut Self {
        assert!(!key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "bad variable name {key:?}");
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn memory_mib(&mut self, mib: u32) -> &mut Self {
        self.memory_mib = mib;
        self
    }

    pub fn cpus(&mut self, n: u32) -> &mut Self {
        self.cpus = n;
        self
    }

    /// Hard bound on one boot (QEMU is killed and the test fails past it).
    pub fn timeout(&mut self, t: Duration) -> &mut Self {
        self.timeout = t;
        self
    }

    /// `set -x` in the scenario (default on; the trace goes to stderr).
    pub fn trace(&mut self, on: bool) -> &mut Self {
        self.trace = on;
        self
    }

    /// Load this module (and what it depends on) at boot, besides [`DEFAULT_MODULES`];
    /// e.g. "ext4", "xfs". The scenario can also call `load_module NAME` itself.
    /// In a Debian guest: `modprobe NAME` at boot (before udev starts; any module of
    /// the kernel package, not only fetched ones).
    pub fn module(&mut self, name: &str) -> &mut Self {
        if !self.is_debian() {
            self.assets.module_closure(&[name.to_string()]);
        }
        self.modules.push(name.to_string());
        self.extra_modules.push(name.to_string());
        self
    }

    /// Load every fetched module at boot.
    pub fn all_modules(&mut self) -> &mut Self {
        self.modules = self.assets.modules.iter().map(|m| m.name.clone()).collect();
        self
    }

    /// Load only these modules (and their dependencies) at boot.
    pub fn only_modules(&mut self, names: &[&str]) -> &mut Self {
        self.modules = names.iter().map(|s| s.to_string()).collect();
        self.assets.module_closure(&self.modules);
        self
    }

    /// An extra kernel command-line argument.
    pub fn kernel_arg(&mut self, arg: &str) -> &mut Self {
        self.kernel_args.push(arg.to_string());
        self
    }

    /// Boot, run `script`, and return the output; panics (with the tails of all
    /// channels) unless the scenario exited 0 with no failed `check`.
    pub fn run(&self, script: &str) -> VmOutput {
        let out = self.run_unchecked(script);
        out.assert_ok();
        out
    }

    /// Boot and run `script`; returns whatever happened, for scenarios expected to
    /// fail. Still panics if QEMU cannot start or the boot times out.
    ///
    /// A boot that [`VmOutput::crash_outside_the_project`] says crashed in a kernel
    /// running none of the project's code is booted once more, and the crash is
    /// recorded in [`retry_log`] for tests/run-all.sh to print: under TCG, Debian's
    /// kernel has crashed at boot in CI (an int3 in sched_clock_cpu, a slab
    /// allocation fault in a path lookup) before the scenario began.
    pub fn run_unchecked(&self, script: &str) -> VmOutput {
        let first = self.boot_once(script);
        let Some(why) = first.crash_outside_the_project() else { return first };
        let logs = first.save_logs().map(|p| p.display().to_string()).unwrap_or_else(|| "not saved".into());
        let test = std::thread::current().name().unwrap_or("?").to_string();
        eprintln!("vm: {why}; booting again, once (logs of the crashed boot: {logs})");
        // one write: tests in parallel append to the same file
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(retry_log()) {
            let _ = f.write_all(format!("{test}: {why} (logs: {logs})\n").as_bytes());
        }
        self.boot_once(script)
    }

    fn boot_once(&self, script: &str) -> VmOutput {
        let run = tempfile::Builder::new().prefix("bcache-vm-run-").tempdir().expect("create run dir");
        let dir = run.path().to_path_buf();
        let mut initrd = dir.join("initramfs.cpio");
        let t0 = Instant::now();
        let module_tree = if let Some(given) = &self.initrd {
            initrd = given.clone();
            None
        } else if self.is_debian() {
            self.build_debian_initramfs(script, &initrd);
            Some(self.debian_module_tree())
        } else {
            self.build_initramfs(script, &initrd);
            None
        };
        let build_time = t0.elapsed();

        let qemu = std::env::var("BCACHE_VM_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());
        let mut args = self.qemu_args(&dir, &initrd);
        if let (Userland::Debian { system_disk, .. }, Some(tree)) = (&self.userland, &module_tree) {
            args.extend(debian_qemu_args(system_disk, tree));
        }
        fs::write(dir.join("qemu-cmdline"), shell_words(&qemu, &args)).unwrap();
        let qemu_log = fs::File::create(dir.join("qemu.log")).unwrap();
        let t1 = Instant::now();
        let mut child = Command::new(&qemu)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(qemu_log.try_clone().unwrap())
            .stderr(qemu_log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {qemu}: {e} (apt-get install qemu-system-x86)"));

        // Watchdog: kill QEMU when the bound passes; the main thread just waits for the exit.
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let timed_out = Arc::new(AtomicBool::new(false));
        let pid = child.id();
        let timeout = self.timeout;
        let flag = timed_out.clone();
        let watchdog = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(timeout) {
                flag.store(true, Ordering::SeqCst);
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
        });
        let exit = child.wait().expect("wait for qemu");
        let _ = done_tx.send(());
        watchdog.join().unwrap();
        let elapsed = t1.elapsed();

        let read = |name: &str| String::from_utf8_lossy(&fs::read(dir.join(name)).unwrap_or_default()).into_owned();
        let meta = read("meta.log");
        let console = read("console.log");
        let dmesg = between(&meta, "@@DMESG-BEGIN", "@@DMESG-END").unwrap_or_default();
        let status = last_status(&meta).or_else(|| last_status(&console));
        let scenario_start = console.lines().rev().find_map(|l| l.trim_end_matches('\r').strip_prefix("@@SCENARIO-START ")?.trim().parse().ok());
        let kept = if keep_runs() { Some(run.keep()) } else { None };
        let out = VmOutput {
            console,
            stdout: read("out.log"),
            stderr: read("err.log"),
            dmesg,
            status,
            qemu_log: read("qemu.log"),
            elapsed,
            initramfs_build: build_time,
            kernel_release: self.assets.release.clone(),
            run_dir: kept.clone(),
            scenario_start,
        };
        eprintln!(
            "vm: {}{} disk(s), exit status {}, {:.1} s in QEMU{}{}",
            match &self.userland {
                Userland::Busybox => "",
                Userland::Debian { init: DebianInit::Systemd, .. } => "debian/systemd, ",
                Userland::Debian { init: DebianInit::Udevd, .. } => "debian/udevd, ",
            },
            self.disks.len(),
            fmt_status(out.status),
            out.elapsed.as_secs_f64(),
            out.scenario_start.map(|s| format!(" (scenario started at {s:.1} s of guest uptime)")).unwrap_or_default(),
            kept.as_ref().map(|k| format!(", run dir kept: {}", k.display())).unwrap_or_default()
        );
        if timed_out.load(Ordering::SeqCst) {
            out.fail(&format!("VM timed out after {} s (BCACHE_VM_TIMEOUT to change); QEMU killed", self.timeout.as_secs()));
        }
        if out.status.is_none() && !exit.success() {
            out.fail(&format!("QEMU failed ({exit}) before the scenario reported a status"));
        }
        out
    }

    fn qemu_args(&self, dir: &Path, initrd: &Path) -> Vec<String> {
        let mut append = vec![
            "console=ttyS0",
            "quiet",
            "panic=-1",
            "oops=panic",
            "rdinit=/init",
            "printk.devkmsg=on",
            "random.trust_cpu=on",
            "mitigations=off",
            // The kernel's check that the 8254 timer reaches the IO-APIC fails on a
            // loaded host under TCG ("IO-APIC + timer doesn't work!", a panic before
            // anything of ours runs: seen with five guests on two cores).
            "no_timer_check",
            // boot time under TCG: crypto self-tests and initcalls nothing here needs
            // (jitter entropy, certificate and encrypted-key setup) cost ~0.7 s
            "cryptomgr.notests",
            "initcall_blacklist=jent_mod_init,load_system_certificate_list,init_encrypted",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        if let Userland::Debian { init, .. } = &self.userland {
            // udev's coldplug would load drivers for all of QEMU's PC (IDE, floppy, kvm,
            // accelerated crypto, ...): seconds each under TCG, for nothing a test uses
            append.push(format!("module_blacklist={}", DEBIAN_MODULE_BLACKLIST.join(",")));
            if *init == DebianInit::Systemd {
                append.push("systemd.unit=bcache-vm.target".into());
            }
        }
        append.extend(self.kernel_args.iter().cloned());

        let mut a: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
        // One host thread for all vCPUs: with multi-threaded TCG a vCPU can run a kernel
        // text_poke_bp int3 after the patching CPU has finished ("Oops: int3" in
        // sched_clock_cpu at boot, seen in CI). The guest keeps its SMP concurrency.
        push(&["-accel", "tcg,thread=single", "-cpu", "max"]);
        push(&["-m", &self.memory_mib.to_string(), "-smp", &self.cpus.to_string()]);
        push(&["-nodefaults", "-nographic", "-no-reboot"]);
        // qboot (from qemu-system-data) starts a -kernel faster than SeaBIOS
        if Path::new(QBOOT).is_file() {
            push(&["-bios", QBOOT]);
        }
        push(&["-kernel", &self.assets.kernel.to_string_lossy(), "-initrd", &initrd.to_string_lossy()]);
        push(&["-append", &append.join(" ")]);
        push(&["-serial", &format!("file:{}", qemu_path(&dir.join("console.log")))]);
        for (i, d) in self.disks.iter().enumerate() {
            let mut drive = format!("if=none,id=disk{i},file={},format=raw,cache=unsafe", qemu_path(&d.path));
            if d.opts.read_only {
                drive.push_str(",readonly=on");
            }
            let mut dev = format!("virtio-blk-pci,drive=disk{i}");
            if let Some(s) = &d.opts.serial {
                write!(dev, ",serial={s}").unwrap();
            }
            if let Some(n) = d.opts.logical_block_size {
                write!(dev, ",logical_block_size={n}").unwrap();
            }
            if let Some(n) = d.opts.physical_block_size {
                write!(dev, ",physical_block_size={n}").unwrap();
            }
            push(&["-drive", &drive, "-device", &dev]);
        }
        push(&["-device", "virtio-serial-pci,id=vser0"]);
        for p in PORTS {
            let file = qemu_path(&dir.join(format!("{p}.log")));
            push(&["-chardev", &format!("file,id=port-{p},path={file}")]);
            push(&["-device", &format!("virtserialport,bus=vser0.0,chardev=port-{p},name={p}")]);
        }
        a
    }

    /// The module tree shared with a Debian guest: the cache's, or a copy with the
    /// overridden modules in updates/ and depmod run again (cached by content under
    /// the cargo target tmp dir).
    fn debian_module_tree(&self) -> PathBuf {
        let overrides = self.debian_module_overrides();
        if overrides.is_empty() {
            return self.assets.module_tree.clone();
        }
        derived_module_tree(&self.assets, &overrides)
    }

    /// Files placed at /lib/modules/NAME.ko (the busybox guest's module path): module
    /// overrides in a Debian guest.
    fn debian_module_overrides(&self) -> Vec<(String, PathBuf)> {
        let mut out: Vec<(String, PathBuf)> = Vec::new();
        for (guest, src, _) in &self.files {
            let Some(file) = guest.strip_prefix("/lib/modules/") else { continue };
            if file.contains('/') || !file.ends_with(".ko") {
                continue;
            }
            let Source::Host(p) = src else { panic!("a module override must be a host file ({guest})") };
            out.retain(|(f, _)| f != file);
            out.push((file.to_string(), p.clone()));
        }
        out
    }

    fn build_debian_initramfs(&self, script: &str, dest: &Path) {
        let Userland::Debian { init, .. } = &self.userland else { unreachable!() };
        let mut fsys = busybox_fs(&["/bin", "/sbin", "/usr/bin", "/usr/sbin", "/lib/modules", "/proc", "/sys", "/dev", "/run", "/tmp", "/payload"]);
        // first stage: only what it takes to build the root
        let stage1: Vec<String> = DEBIAN_STAGE1_MODULES.iter().map(|s| s.to_string()).collect();
        let mut order = String::new();
        for m in self.assets.module_closure(&stage1) {
            let file = m.path.file_name().unwrap().to_string_lossy().into_owned();
            fsys.node(&format!("/lib/modules/{file}"), Node::File(Source::Host(m.path.clone()), 0o644));
            writeln!(order, "{file}").unwrap();
        }
        fsys.node("/lib/modules/load-order", Node::File(Source::Bytes(order.into_bytes()), 0o644));

        // second stage: files copied over the Debian root (paths under /payload)
        let mut p = |path: &str, node: Node| fsys.node(&format!("/payload{path}"), node);
        if let Some(bin) = &self.bcache_binary {
            assert!(bin.is_file(), "bcache binary {} does not exist", bin.display());
            // its libraries are the host's, there in the lower layer
            p(GUEST_BCACHE, Node::File(Source::Host(bin.clone()), 0o755));
            for name in MULTICALL_NAMES {
                p(&format!("/usr/sbin/{name}"), Node::Symlink("bcache".into()));
            }
            for name in ["probe-bcache", "bcache-register"] {
                p(&format!("/usr/lib/udev/{name}"), Node::Symlink(GUEST_BCACHE.into()));
            }
            p("/usr/lib/udev/rules.d/69-bcache.rules", Node::File(Source::Host(PROJECT_UDEV_RULE.into()), 0o644));
        }
        for (guest, host) in &self.binaries {
            p(guest, Node::File(Source::Host(host.clone()), 0o755));
        }
        let overrides = self.debian_module_overrides();
        for (guest, src, mode) in &self.files {
            if overrides.iter().any(|(f, _)| guest.strip_prefix("/lib/modules/") == Some(f.as_str())) {
                continue;
            }
            p(guest, Node::File(src.clone(), *mode));
        }
        for (guest, target) in &self.symlinks {
            p(guest, Node::Symlink(target.clone()));
        }

        let mut conf = String::new();
        writeln!(conf, "VM_USERLAND=debian").unwrap();
        writeln!(conf, "VM_INIT={}", if *init == DebianInit::Systemd { "systemd" } else { "udevd" }).unwrap();
        writeln!(conf, "VM_SYSTEM_SERIAL={SYSTEM_DISK_SERIAL}").unwrap();
        writeln!(conf, "VM_SYSTEM_DISK={}", disk_dev(self.disks.len())).unwrap();
        writeln!(conf, "VM_MODULES={}", sh_quote(&self.extra_modules.join(" "))).unwrap();
        writeln!(conf, "VM_SCENARIO=/usr/lib/bcache-vm/scenario.sh").unwrap();
        writeln!(conf, "VM_TRACE={}", if self.trace { 1 } else { 0 }).unwrap();
        writeln!(conf, "VM_PORTS='{}'", PORTS.join(" ")).unwrap();
        writeln!(conf, "VM_KERNEL_RELEASE={}", sh_quote(&self.assets.release)).unwrap();
        writeln!(conf, "VM_DISKS={}", sh_quote(&(0..self.disks.len()).map(disk_dev).collect::<Vec<_>>().join(" "))).unwrap();
        writeln!(conf, "export VM_USERLAND VM_SYSTEM_DISK VM_SCENARIO VM_TRACE VM_KERNEL_RELEASE VM_DISKS").unwrap();
        for (k, v) in &self.env {
            writeln!(conf, "export {k}={}", sh_quote(v)).unwrap();
        }
        let bytes = |s: &str| Node::File(Source::Bytes(s.as_bytes().to_vec()), 0o644);
        fsys.node("/etc/vm.conf", bytes(&conf));
        fsys.node("/init", Node::File(Source::Bytes(GUEST_DEBIAN_STAGE1.into()), 0o755));
        let mut p = |path: &str, node: Node| fsys.node(&format!("/payload{path}"), node);
        p("/usr/lib/bcache-vm/vm.conf", bytes(&conf));
        p("/usr/lib/bcache-vm/guest.sh", Node::File(Source::Bytes(GUEST_DEBIAN_GUEST.into()), 0o755));
        p("/usr/lib/bcache-vm/run-scenario.sh", bytes(GUEST_RUN_SCENARIO));
        p("/usr/lib/bcache-vm/guest-lib.sh", bytes(GUEST_LIB));
        p("/usr/lib/bcache-vm/scenario.sh", bytes(script));
        if !self.extra_modules.is_empty() {
            p("/run/modules-load.d/bcache-vm.conf", bytes(&self.extra_modules.iter().map(|m| format!("{m}\n")).collect::<String>()));
        }
        let mut wants: Vec<String> = DEBIAN_BOOT_UNITS.iter().map(|s| s.to_string()).collect();
        wants.extend(self.boot_units.iter().cloned());
        p(
            "/run/systemd/system/bcache-vm.target",
            bytes(&format!(
                "# written by tests/common/vm.rs at every boot\n[Unit]\nDescription=bcache-tools VM test\nWants={} bcache-vm-scenario.service\nAllowIsolate=yes\n",
                wants.join(" ")
            )),
        );
        p(
            "/run/systemd/system/bcache-vm-scenario.service",
            bytes(&format!(
                "# written by tests/common/vm.rs at every boot\n[Unit]\nDescription=bcache-tools VM test scenario\nDefaultDependencies=no\n\
                 After={} systemd-udev-trigger.service systemd-udevd.service systemd-journald.service\n\
                 Conflicts=shutdown.target\nBefore=shutdown.target\n\
                 [Service]\nType=simple\nExecStart=/bin/bash /usr/lib/bcache-vm/guest.sh service\n\
                 StandardOutput=journal+console\nStandardError=journal+console\nTimeoutStartSec=infinity\n",
                wants.join(" ")
            )),
        );
        fsys.write_cpio(dest);
    }

    fn build_initramfs(&self, script: &str, dest: &Path) {
        let mut fsys = busybox_fs(&[
            "/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/local/bin", "/lib/modules", "/proc", "/sys", "/dev", "/run", "/tmp", "/mnt",
            "/root", "/etc", C_TOOLS_DIR,
        ]);

        // every fetched module is in the guest (for load_module); the boot set is loaded by /init
        let mut deps = String::new();
        for m in &self.assets.modules {
            let file = m.path.file_name().unwrap().to_string_lossy();
            fsys.node(&format!("/lib/modules/{file}"), Node::File(Source::Host(m.path.clone()), 0o644));
            let pre: Vec<&str> = self.assets.prerequisites(m).iter().map(|p| p.name.as_str()).collect();
            writeln!(deps, "{} {file} {}", m.name, pre.join(" ")).unwrap();
        }
        fsys.node("/lib/modules/deps", Node::File(Source::Bytes(deps.into_bytes()), 0o644));
        let order: String = self.assets.module_closure(&self.modules).iter().map(|m| format!("{}\n", m.path.file_name().unwrap().to_string_lossy())).collect();
        fsys.node("/lib/modules/load-order", Node::File(Source::Bytes(order.into_bytes()), 0o644));

        if let Some(bin) = &self.bcache_binary {
            assert!(bin.is_file(), "bcache binary {} does not exist", bin.display());
            fsys.program(GUEST_BCACHE, bin);
            for name in MULTICALL_NAMES {
                fsys.node(&format!("/usr/sbin/{name}"), Node::Symlink("bcache".into()));
            }
            for name in ["probe-bcache", "bcache-register"] {
                fsys.node(&format!("/lib/udev/{name}"), Node::Symlink(GUEST_BCACHE.into()));
            }
        }
        for (guest, host) in &self.binaries {
            fsys.program(guest, host);
        }
        for (guest, src, mode) in &self.files {
            fsys.node(guest, Node::File(src.clone(), *mode));
        }

        let mut conf = String::new();
        writeln!(conf, "VM_TRACE={}", if self.trace { 1 } else { 0 }).unwrap();
        writeln!(conf, "VM_PORTS='{}'", PORTS.join(" ")).unwrap();
        writeln!(conf, "VM_KERNEL_RELEASE={}", sh_quote(&self.assets.release)).unwrap();
        writeln!(conf, "VM_DISKS={}", sh_quote(&(0..self.disks.len()).map(disk_dev).collect::<Vec<_>>().join(" "))).unwrap();
        writeln!(conf, "export VM_TRACE VM_KERNEL_RELEASE VM_DISKS").unwrap();
        for (k, v) in &self.env {
            writeln!(conf, "export {k}={}", sh_quote(v)).unwrap();
        }
        fsys.node("/etc/vm.conf", Node::File(Source::Bytes(conf.into_bytes()), 0o644));
        fsys.node("/init", Node::File(Source::Bytes(GUEST_INIT.into()), 0o755));
        fsys.node("/usr/lib/bcache-vm/run-scenario.sh", Node::File(Source::Bytes(GUEST_RUN_SCENARIO.into()), 0o644));
        fsys.node("/usr/lib/bcache-vm/guest-lib.sh", Node::File(Source::Bytes(GUEST_LIB.into()), 0o644));
        fsys.node("/scenario.sh", Node::File(Source::Bytes(script.as_bytes().to_vec()), 0o644));

        fsys.write_cpio(dest);
    }
}

/// What a run left: the three channels, the dmesg and the exit status.
#[derive(Clone, Debug)]
pub struct VmOutput {
    /// Serial console: kernel messages (quiet: warnings and worse) and /init's.
    pub console: String,
    /// The scenario's stdout (markers included).
    pub stdout: String,
    /// The scenario's stderr, with the `set -x` trace.
    pub stderr: String,
    /// The guest's whole kernel log, taken after the scenario.
    pub dmesg: String,
    /// Exit status of the scenario; None if the guest never reported one
    /// (kernel panic, QEMU killed). 124-126: /init could not start the scenario.
    pub status: Option<i32>,
    /// QEMU's own stdout and stderr.
    pub qemu_log: String,
    /// Wall time from starting QEMU to its exit.
    pub elapsed: Duration,
    pub initramfs_build: Duration,
    pub kernel_release: String,
    /// The run directory, when kept (BCACHE_VM_KEEP=1).
    pub run_dir: Option<PathBuf>,
    /// The guest's uptime (seconds) when the scenario started: in a Debian guest the
    /// boot time up to udev settled, in a busybox guest up to the modules loaded.
    /// None if it never started (or the initramfs was not the harness's own).
    pub scenario_start: Option<f64>,
}

/// One `check` result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    /// The rest of a FAIL line (why).
    pub detail: String,
}

impl VmOutput {
    /// Exited 0 and no check failed.
    pub fn ok(&self) -> bool {
        self.status == Some(0) && self.checks().iter().all(|c| c.passed)
    }

    pub fn assert_ok(&self) -> &Self {
        if self.status != Some(0) {
            self.fail(&format!("scenario exit status {}", fmt_status(self.status)));
        }
        let failed: Vec<_> = self.checks().into_iter().filter(|c| !c.passed).collect();
        if !failed.is_empty() {
            let list: Vec<String> = failed.iter().map(|c| format!("{} {}", c.name, c.detail)).collect();
            self.fail(&format!("failed checks: {}", list.join("; ")));
        }
        self
    }

    pub fn assert_status(&self, status: i32) -> &Self {
        if self.status != Some(status) {
            self.fail(&format!("scenario exit status {}, expected {status}", fmt_status(self.status)));
        }
        self
    }

    /// Lines of stdout between "@@BEGIN name" and "@@END name" (the first such
    /// section), joined with '\n' and ending with '\n' if not empty. Panics if absent.
    pub fn section(&self, name: &str) -> String {
        self.try_section(name).unwrap_or_else(|| self.fail(&format!("no section {name:?} in the scenario's stdout")))
    }

    pub fn try_section(&self, name: &str) -> Option<String> {
        self.sections(name).into_iter().next()
    }

    /// All sections with this name, in order.
    pub fn sections(&self, name: &str) -> Vec<String> {
        let begin = format!("@@BEGIN {name}");
        let end = format!("@@END {name}");
        let mut found = Vec::new();
        let mut cur: Option<String> = None;
        for line in self.stdout.lines() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            match &mut cur {
                None if line == begin => cur = Some(String::new()),
                None => {}
                Some(_) if line == end => found.push(cur.take().unwrap()),
                Some(s) => {
                    s.push_str(line);
                    s.push('\n');
                }
            }
        }
        found
    }

    /// The value of the last "@@ KEY VALUE" line.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.values(key).pop()
    }

    /// Like `value`, panicking with the report when absent.
    pub fn expect_value(&self, key: &str) -> &str {
        self.value(key).unwrap_or_else(|| self.fail(&format!("no \"@@ {key} ...\" line in the scenario's stdout")))
    }

    /// The last "@@ KEY VALUE" line has this value (panics with the report otherwise).
    pub fn assert_value(&self, key: &str, expected: &str) -> &Self {
        match self.value(key) {
            Some(v) if v == expected => self,
            Some(v) => self.fail(&format!("@@ {key}: expected {expected:?}, got {v:?}")),
            None => self.fail(&format!("no \"@@ {key} ...\" line, expected {expected:?}")),
        }
    }

    pub fn values(&self, key: &str) -> Vec<&str> {
        self.stdout
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("@@ ")?;
                let rest = rest.strip_suffix('\r').unwrap_or(rest);
                match rest.split_once(' ') {
                    Some((k, v)) if k == key => Some(v),
                    None if rest == key => Some(""),
                    _ => None,
                }
            })
            .collect()
    }

    pub fn checks(&self) -> Vec<Check> {
        self.stdout
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("@@CHECK ")?;
                let (verdict, rest) = rest.split_once(' ')?;
                let (name, detail) = rest.split_once(' ').unwrap_or((rest, ""));
                Some(Check { name: name.to_string(), passed: verdict == "PASS", detail: detail.trim().to_string() })
            })
            .collect()
    }

    /// The check called `name` passed (panics if it failed or never ran).
    pub fn assert_check(&self, name: &str) -> &Self {
        match self.checks().into_iter().find(|c| c.name == name) {
            Some(c) if c.passed => self,
            Some(c) => self.fail(&format!("check {name} failed {}", c.detail)),
            None => self.fail(&format!("check {name} never ran")),
        }
    }

    /// Scenario stdout without marker lines.
    pub fn plain_stdout(&self) -> String {
        self.stdout.lines().filter(|l| !l.starts_with("@@")).map(|l| format!("{l}\n")).collect()
    }

    /// Kernel log lines after the last `kmsg_mark NAME` (None if there is no such mark).
    pub fn dmesg_since(&self, mark: &str) -> Option<String> {
        let needle = format!("@@MARK {mark}");
        let lines: Vec<&str> = self.dmesg.lines().collect();
        let pos = lines.iter().rposition(|l| l.trim_end().ends_with(&needle))?;
        Some(lines[pos + 1..].iter().map(|l| format!("{l}\n")).collect())
    }

    /// Why the guest kernel crashed with none of the project's code in it, if it did:
    /// an Oops or BUG report on the console that ended in a panic, before the
    /// scenario started (no start line, nothing on its stdout or stderr: the marker
    /// goes through the console's tty buffer, which a panic may not flush), with
    /// neither bcache nor device-mapper among the loaded modules. The project reaches
    /// the kernel only through those two (the busybox guest loads both before its
    /// scenario; a Debian guest loads them when udev or the scenario asks), so such a
    /// crash is the emulator's or the distribution kernel's, not a finding.
    pub fn crash_outside_the_project(&self) -> Option<String> {
        if self.status.is_some() || self.scenario_start.is_some() || !self.stdout.is_empty() || !self.stderr.is_empty() {
            return None;
        }
        if !self.console.contains("Kernel panic - not syncing") {
            return None;
        }
        let lists: Vec<&str> = self.console.lines().filter_map(|l| l.split_once("Modules linked in:").map(|(_, m)| m)).collect();
        if lists.is_empty() {
            return None; // a panic without an Oops report (init died, no root): not a crash to wave through
        }
        let ours = |m: &str| m == "bcache" || m.starts_with("dm_");
        let loaded = || lists.iter().flat_map(|l| l.split_whitespace()).map(|m| m.split('(').next().unwrap_or(m).trim_matches(|c| c == '[' || c == ']'));
        if loaded().any(ours) {
            return None;
        }
        let report = self.first_crash()?;
        let head = report.lines().next().unwrap_or_default().trim();
        Some(format!("the guest kernel crashed before the scenario started, with no bcache or dm module loaded: {head}"))
    }

    /// The console from its first kernel crash report on (None without one): the
    /// report's head, with the faulting address and reason, falls out of the tail.
    fn first_crash(&self) -> Option<String> {
        let lines: Vec<&str> = self.console.lines().collect();
        let start = lines.iter().position(|l| CRASH_MARKERS.iter().any(|m| l.contains(m)))?;
        Some(lines[start..lines.len().min(start + 30)].iter().map(|l| format!("{l}\n")).collect())
    }

    /// Human-readable summary with the tail of every channel.
    pub fn report(&self) -> String {
        let mut r = String::new();
        writeln!(
            r,
            "guest kernel {}, exit status {}, {:.1} s in QEMU (initramfs built in {:.2} s)",
            self.kernel_release,
            fmt_status(self.status),
            self.elapsed.as_secs_f64(),
            self.initramfs_build.as_secs_f64()
        )
        .unwrap();
        for (name, text, n) in [
            ("scenario stderr (trace)", &self.stderr, 40),
            ("scenario stdout", &self.stdout, 40),
            ("console", &self.console, 60),
            ("qemu", &self.qemu_log, 20),
        ] {
            writeln!(r, "----- {name} (last {n} lines) -----").unwrap();
            r.push_str(&tail(text, n));
        }
        if let Some(crash) = self.first_crash() {
            writeln!(r, "----- console: the first kernel crash report (30 lines) -----").unwrap();
            r.push_str(&crash);
        }
        if self.status.is_some() {
            writeln!(r, "----- dmesg (last 30 lines) -----").unwrap();
            r.push_str(&tail(&self.dmesg, 30));
        }
        r
    }

    /// Panic with `why`, the report, and (when possible) the full logs saved in
    /// the cargo target tmp dir.
    pub fn fail(&self, why: &str) -> ! {
        let saved = self.save_logs().map(|p| format!("\nfull logs: {}", p.display())).unwrap_or_default();
        panic!("VM test failed: {why}\n{}{saved}", self.report());
    }

    fn save_logs(&self) -> Option<PathBuf> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let base = target_tmp()?.join("vm-logs");
        let thread = std::thread::current().name().unwrap_or("main").replace("::", "-").replace(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_', "_");
        let dir = base.join(format!("{thread}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        fs::create_dir_all(&dir).ok()?;
        for (name, text) in [("console.log", &self.console), ("stdout.log", &self.stdout), ("stderr.log", &self.stderr), ("dmesg.log", &self.dmesg), ("qemu.log", &self.qemu_log)] {
            fs::write(dir.join(name), text).ok()?;
        }
        Some(dir)
    }
}

/// An initramfs tree with `dirs`, /dev/console, /dev/null, and busybox with
/// a link for each of its applets (the applet list names busybox itself:
/// skipped): what both guests' first stage stands on.
fn busybox_fs(dirs: &[&str]) -> GuestFs {
    let mut fsys = GuestFs::default();
    for d in dirs {
        fsys.dir(d);
    }
    fsys.node("/dev/console", Node::CharDev(5, 1, 0o600));
    fsys.node("/dev/null", Node::CharDev(1, 3, 0o666));
    let busybox = find_host_program("busybox").expect("busybox not found (apt-get install busybox-static)");
    fsys.program("/bin/busybox", &busybox);
    for applet in busybox_applets(&busybox) {
        let path = format!("/{applet}");
        if path != "/bin/busybox" && !path.ends_with("/busybox") {
            fsys.node_if_absent(&path, Node::Symlink("/bin/busybox".into()));
        }
    }
    fsys
}

/// QEMU arguments of a Debian guest besides the common ones: the system disk (last
/// virtio disk) and the two 9p shares (the host's /, the module tree).
fn debian_qemu_args(system_disk: &Path, module_tree: &Path) -> Vec<String> {
    let mut a = Vec::new();
    a.push("-drive".into());
    a.push(format!("if=none,id=sysdisk,file={},format=raw,cache=unsafe", qemu_path(system_disk)));
    a.push("-device".into());
    a.push(format!("virtio-blk-pci,drive=sysdisk,serial={SYSTEM_DISK_SERIAL}"));
    for (tag, path) in [("hostroot", Path::new("/")), ("modules", module_tree)] {
        a.push("-virtfs".into());
        a.push(format!("local,path={},mount_tag={tag},security_model=none,readonly=on,multidevs=remap", qemu_path(path)));
    }
    a
}

/// A copy of the cache's module tree (hard links where possible) with `overrides`
/// (file name, host .ko) in updates/ and depmod's indexes made again, under the cargo
/// target tmp dir, keyed by the overrides' contents; returns the dir holding RELEASE/.
fn derived_module_tree(assets: &Assets, overrides: &[(String, PathBuf)]) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    assets.release.hash(&mut h);
    for (file, ko) in overrides {
        file.hash(&mut h);
        fs::read(ko).unwrap_or_else(|e| panic!("module override {}: {e}", ko.display())).hash(&mut h);
    }
    let base = target_tmp().unwrap_or_else(std::env::temp_dir).join("vm-modules");
    let dest = base.join(format!("{}-{:016x}", assets.release, h.finish()));
    let tree = dest.join("lib/modules");
    if tree.join(&assets.release).join("modules.dep.bin").is_file() {
        return tree;
    }
    fs::create_dir_all(&base).unwrap();
    let tmp = tempfile::Builder::new().prefix(".build-").tempdir_in(&base).expect("create module tree dir");
    let rel = tmp.path().join("lib/modules").join(&assets.release);
    fn link_tree(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
        for e in fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
            let e = e.unwrap();
            let (src, dst) = (e.path(), to.join(e.file_name()));
            if e.file_type().unwrap().is_dir() {
                link_tree(&src, &dst);
            } else if e.file_name().to_string_lossy().starts_with("modules.") {
                fs::copy(&src, &dst).unwrap(); // depmod's outputs: never share them
            } else if fs::hard_link(&src, &dst).is_err() {
                fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
            }
        }
    }
    link_tree(&assets.module_tree.join(&assets.release), &rel);
    fs::create_dir_all(rel.join("updates")).unwrap();
    for (file, ko) in overrides {
        fs::copy(ko, rel.join("updates").join(file)).unwrap_or_else(|e| panic!("copy {}: {e}", ko.display()));
    }
    let out = Command::new("depmod").arg("-b").arg(tmp.path()).arg(&assets.release).output().unwrap_or_else(|e| panic!("cannot run depmod (apt-get install kmod): {e}"));
    assert!(out.status.success(), "depmod on {}: {}", tmp.path().display(), String::from_utf8_lossy(&out.stderr));
    // another test may have made the same tree meanwhile: either is fine
    let tmp = tmp.keep();
    if fs::rename(&tmp, &dest).is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    assert!(tree.join(&assets.release).join("modules.dep.bin").is_file(), "no module tree at {}", tree.display());
    tree
}

fn fmt_status(s: Option<i32>) -> String {
    s.map(|s| s.to_string()).unwrap_or_else(|| "none (the guest never reported one)".into())
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].iter().map(|l| format!("{l}\n")).collect()
}

fn between(text: &str, begin: &str, end: &str) -> Option<String> {
    let start = text.rfind(&format!("{begin}\n"))? + begin.len() + 1;
    let stop = text[start..].find(&format!("{end}\n")).map(|i| start + i).unwrap_or(text.len());
    Some(text[start..stop].to_string())
}

fn last_status(text: &str) -> Option<i32> {
    text.lines().rev().find_map(|l| l.trim_end_matches('\r').strip_prefix("@@STATUS ")?.trim().parse().ok())
}

/// The first line of a kernel crash report on the console contains one of these.
const CRASH_MARKERS: &[&str] = &["BUG:", "Oops", "general protection fault", "Kernel panic"];

/// Cargo's scratch directory for integration tests (target/tmp).
fn target_tmp() -> Option<PathBuf> {
    option_env!("CARGO_TARGET_TMPDIR").map(PathBuf::from)
}

/// Where [`Vm::run_unchecked`] records the boots it made again after a crash outside
/// the project: one line each (test, crash, logs). tests/run-all.sh names the file
/// (BCACHE_VM_RETRY_LOG) and prints it; else vm-retries.log in cargo's target tmp dir.
pub fn retry_log() -> PathBuf {
    match std::env::var_os("BCACHE_VM_RETRY_LOG") {
        Some(p) => PathBuf::from(p),
        None => target_tmp().unwrap_or_else(std::env::temp_dir).join("vm-retries.log"),
    }
}

fn keep_runs() -> bool {
    std::env::var("BCACHE_VM_KEEP").map(|v| !v.is_empty() && v != "0").unwrap_or(false)
}

/// QEMU option values escape ',' as ",,".
fn qemu_path(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn shell_words(prog: &str, args: &[String]) -> String {
    let mut s = sh_quote(prog);
    for a in args {
        s.push(' ');
        s.push_str(&sh_quote(a));
    }
    s.push('\n');
    s
}

/// Look a program up like a root shell would, plus /lib/udev (probe-bcache, bcache-register).
pub fn find_host_program(name: &str) -> Option<PathBuf> {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.is_file().then(|| p.to_path_buf());
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let extra = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin", "/lib/udev", "/usr/lib/udev"];
    let found = path.split(':').filter(|d| !d.is_empty()).chain(extra).map(|d| Path::new(d).join(name)).find(|c| c.is_file());
    found
}

fn busybox_applets(busybox: &Path) -> Vec<String> {
    static LIST: OnceLock<Vec<String>> = OnceLock::new();
    LIST.get_or_init(|| {
        let out = Command::new(busybox).arg("--list-full").output().expect("run busybox --list-full");
        assert!(out.status.success(), "busybox --list-full failed");
        String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().trim_start_matches('/').to_string()).filter(|l| !l.is_empty()).collect()
    })
    .clone()
}

/// Shared libraries of a host program (with the dynamic loader), from ldd.
/// Empty for static programs.
pub fn shared_libraries(program: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(program).output().expect("run ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Vec::new();
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                assert!(!rest.starts_with("not found"), "{}: shared library {} not found", program.display(), name.trim());
                rest.split_whitespace().next().unwrap_or("")
            }
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    libs
}

#[derive(Clone, Debug)]
enum Node {
    Dir,
    File(Source, u32),
    Symlink(String),
    CharDev(u32, u32, u32),
}

/// The guest's root file system, written out as a newc cpio archive.
#[derive(Default)]
struct GuestFs {
    nodes: BTreeMap<String, Node>,
}

impl GuestFs {
    fn dir(&mut self, path: &str) {
        let mut p = String::new();
        for part in path.split('/').filter(|s| !s.is_empty()) {
            p.push('/');
            p.push_str(part);
            self.nodes.entry(p.clone()).or_insert(Node::Dir);
        }
    }

    fn node(&mut self, path: &str, node: Node) {
        assert!(path.starts_with('/') && !path.ends_with('/'), "bad guest path {path}");
        if let Some(parent) = Path::new(path).parent() {
            self.dir(&parent.to_string_lossy());
        }
        self.nodes.insert(path.to_string(), node);
    }

    fn node_if_absent(&mut self, path: &str, node: Node) {
        if !self.nodes.contains_key(path) {
            self.node(path, node);
        }
    }

    /// A host executable and the libraries it needs, at the paths ldd names.
    fn program(&mut self, guest: &str, host: &Path) {
        self.node(guest, Node::File(Source::Host(host.to_path_buf()), 0o755));
        for lib in shared_libraries(host) {
            self.node_if_absent(&lib.to_string_lossy(), Node::File(Source::Host(lib.clone()), 0o755));
        }
    }

    fn write_cpio(&self, dest: &Path) {
        let f = fs::File::create(dest).unwrap_or_else(|e| panic!("create {}: {e}", dest.display()));
        let mut w = BufWriter::with_capacity(1 << 20, f);
        for (ino, (path, node)) in (1u32..).zip(&self.nodes) {
            let name = path.trim_start_matches('/');
            let (mode, data, rdev) = match node {
                Node::Dir => (0o040755, Vec::new(), (0, 0)),
                Node::File(Source::Bytes(b), m) => (0o100000 | m, b.clone(), (0, 0)),
                Node::File(Source::Host(p), m) => (0o100000 | m, fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())), (0, 0)),
                Node::Symlink(t) => (0o120777, t.as_bytes().to_vec(), (0, 0)),
                Node::CharDev(maj, min, m) => (0o020000 | m, Vec::new(), (*maj, *min)),
            };
            cpio_entry(&mut w, ino, mode, name, &data, rdev);
        }
        cpio_entry(&mut w, 0, 0, "TRAILER!!!", &[], (0, 0));
        w.flush().unwrap();
    }
}

fn cpio_entry(w: &mut impl Write, ino: u32, mode: u32, name: &str, data: &[u8], rdev: (u32, u32)) {
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let namesize = name.len() + 1;
    let fields = [ino, mode, 0, 0, nlink, 0, data.len() as u32, 0, 0, rdev.0, rdev.1, namesize as u32, 0];
    let mut header = String::with_capacity(110);
    header.push_str("070701");
    for f in fields {
        write!(header, "{f:08x}").unwrap();
    }
    w.write_all(header.as_bytes()).unwrap();
    w.write_all(name.as_bytes()).unwrap();
    w.write_all(&[0]).unwrap();
    w.write_all(&[0u8; 3][..pad4(110 + namesize)]).unwrap();
    w.write_all(data).unwrap();
    w.write_all(&[0u8; 3][..pad4(data.len())]).unwrap();
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}
