//! kernel/dkms.conf with the real dkms tool: `dkms add`, `build`, `install` and
//! `remove` of bcache-register-raw/0.1.0 for the VM guest's kernel, every DKMS
//! tree (sources, builds, installed modules, signing key) in a temporary
//! directory; then the guest boots with the module DKMS installed.
//!
//! Needs root (dkms refuses `add DIR` and `install` otherwise), dkms
//! (`apt-get install dkms`), the VM assets (tests/vm/fetch-assets.sh) and
//! what kernel/build.sh needs. A missing piece fails the test: never a skip.

mod common;

use common::vm::{find_host_program, Assets, Scratch, Vm};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

const NAME: &str = "bcache-register-raw";
const VERSION: &str = "0.1.0";
const MIB: u64 = 1 << 20;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// dkms confined to private trees under `root`.
struct Dkms {
    bin: PathBuf,
    root: PathBuf,
}

impl Dkms {
    fn new(root: &Path) -> Dkms {
        let bin = find_host_program("dkms").unwrap_or_else(|| {
            panic!("dkms is not installed: apt-get install dkms (this test runs the real dkms on kernel/dkms.conf)")
        });
        for dir in ["src", "dkms", "lib/modules"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        Dkms { bin, root: root.to_path_buf() }
    }

    fn dkms_tree(&self) -> PathBuf {
        self.root.join("dkms")
    }

    fn install_tree(&self) -> PathBuf {
        self.root.join("lib/modules")
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .arg("--dkmstree")
            .arg(self.dkms_tree())
            .arg("--sourcetree")
            .arg(self.root.join("src"))
            .arg("--installtree")
            .arg(self.install_tree())
            // dkms has no option for its signing key: it would make one in
            // /var/lib/dkms whenever it finds the kernel's sign-file.
            .env("mok_signing_key", self.root.join("mok.key"))
            .env("mok_certificate", self.root.join("mok.pub"));
        let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        eprintln!("dkms {}: {}", args.join(" "), out.status);
        out
    }

    /// Runs dkms and panics with its output (and the build's make.log,
    /// which dkms keeps to itself) unless it succeeds.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        if !out.status.success() {
            let log = self.dkms_tree().join(NAME).join(VERSION).join("build/make.log");
            panic!(
                "dkms {} failed ({}):\n{}{}\nmake.log:\n{}",
                args.join(" "),
                out.status,
                text(&out.stdout),
                text(&out.stderr),
                fs::read_to_string(&log).unwrap_or_else(|e| format!("({}: {e})", log.display()))
            );
        }
        text(&out.stdout)
    }
}

fn modinfo(ko: &Path, field: &str) -> String {
    // /usr/sbin may not be in a test's PATH
    let bin = find_host_program("modinfo").unwrap_or_else(|| panic!("modinfo is not installed: apt-get install kmod"));
    let out = Command::new(bin).args(["-F", field]).arg(ko).output().unwrap_or_else(|e| panic!("cannot run modinfo: {e}"));
    assert!(out.status.success(), "modinfo {}: {}", ko.display(), text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("run id -u");
    text(&out.stdout).trim() == "0"
}

/// Paths where DKMS would leave state on this machine had it not been
/// confined.
fn system_paths(release: &str) -> Vec<PathBuf> {
    [
        format!("/var/lib/dkms/{NAME}"),
        "/var/lib/dkms/mok.key".to_string(),
        format!("/usr/src/{NAME}-{VERSION}"),
        format!("/lib/modules/{release}/updates/dkms/bcache.ko"),
    ]
    .into_iter()
    .map(PathBuf::from)
    .collect()
}

#[test]
fn dkms_builds_installs_and_removes_the_patched_module() {
    assert!(is_root(), "this test runs dkms add and dkms install, which need root");
    let assets = Assets::find().unwrap_or_else(|e| panic!("{e}"));
    let release = assets.release.clone();
    let module = format!("{NAME}/{VERSION}");
    let untouched: Vec<_> = system_paths(&release).into_iter().filter(|p| !p.exists()).collect();

    // What --kernelsourcedir needs when linux-headers-RELEASE is not
    // installed (the guest's kernel is not the host's).
    let out = Command::new(repo().join("kernel/build.sh"))
        .args(["--headers", &release])
        .output()
        .unwrap_or_else(|e| panic!("cannot run kernel/build.sh: {e}"));
    assert!(out.status.success(), "kernel/build.sh --headers {release}: {}", text(&out.stderr));
    let headers = text(&out.stdout).lines().last().unwrap_or_default().to_string();
    assert!(Path::new(&headers).join("Makefile").is_file(), "kernel/build.sh --headers gave {headers:?}");

    let scratch = Scratch::new();
    let dkms = Dkms::new(&scratch.path().join("trees"));
    // dkms install refuses a kernel without a module directory.
    fs::create_dir_all(dkms.install_tree().join(&release)).unwrap();

    let kernel_dir = repo().join("kernel");
    dkms.ok(&["add", kernel_dir.to_str().unwrap()]);
    let status = dkms.ok(&["status", &module]);
    assert!(status.contains(&format!("{module}: added")), "after dkms add: {status}");

    let t0 = Instant::now();
    dkms.ok(&["build", &module, "-k", &release, "--kernelsourcedir", &headers]);
    let build_time = t0.elapsed();
    // depmod knows nothing of --installtree: it would index /lib/modules.
    dkms.ok(&["install", &module, "-k", &release, "--kernelsourcedir", &headers, "--no-depmod"]);
    let status = dkms.ok(&["status", &module]);
    assert!(status.lines().any(|l| l.starts_with(&format!("{module}, {release}, ")) && l.ends_with(": installed")), "after dkms install: {status}");

    let ko = dkms.install_tree().join(&release).join("updates/dkms/bcache.ko");
    assert!(ko.is_file(), "dkms install put no {}", ko.display());
    let vermagic = modinfo(&ko, "vermagic");
    assert_eq!(vermagic.split_whitespace().next(), Some(release.as_str()), "vermagic of {}: {vermagic}", ko.display());
    let bytes = fs::read(&ko).unwrap();
    assert!(bytes.windows(b"register_raw".len()).any(|w| w == b"register_raw"), "{} is not the patched module", ko.display());
    eprintln!("dkms build: {:.1} s; installed {} ({} bytes)", build_time.as_secs_f64(), ko.display(), bytes.len());

    // The patch's range (BUILD_EXCLUSIVE_KERNEL): DKMS skips another
    // kernel (status 77) instead of failing, so autoinstall at a kernel
    // upgrade passes over it.
    let other = dkms.run(&["build", &module, "-k", "6.13.0-1-amd64", "--kernelsourcedir", &headers]);
    assert_eq!(other.status.code(), Some(77), "dkms build for 6.13: {}{}", text(&other.stdout), text(&other.stderr));

    let disk = scratch.image("raw.img", 64 * MIB);
    let mut vm = Vm::new();
    vm.module_override(&ko).disk(&disk);
    let t1 = Instant::now();
    vm.run(
        r#"
        check register_raw_interface test -e /sys/fs/bcache/register_raw
        # O: not Debian's in-tree bcache.ko
        check out_of_tree_module grep -q O /sys/module/bcache/taint
        check register_raw sh -c 'echo "/dev/vda 2e7d4c1a-5b3f-4e8d-9a6c-0f1e2d3c4b5a none" > /sys/fs/bcache/register_raw'
        B=$(bcache_of /dev/vda)
        check bcache_device test -b "$B"
        "#,
    );
    eprintln!("guest with the DKMS module: {:.1} s", t1.elapsed().as_secs_f64());

    dkms.ok(&["remove", &module, "--all", "--no-depmod"]);
    assert!(!ko.exists(), "dkms remove left {}", ko.display());
    assert!(!dkms.dkms_tree().join(NAME).exists(), "dkms remove left {} in its tree", NAME);
    let status = dkms.ok(&["status"]);
    assert!(!status.contains(NAME), "after dkms remove: {status}");

    for p in untouched {
        assert!(!p.exists(), "DKMS state escaped the private trees: {}", p.display());
    }
}
