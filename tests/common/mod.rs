//! Shared helpers of the integration tests (`mod common;`).
#[allow(dead_code)] // used by the boot test and bench/boot.rs only
pub mod many;
pub mod vm;

use std::path::PathBuf;

/// The register_raw module for the guest's kernel, built by kernel/build.sh
/// (tests/run-all.sh builds it). A missing module fails the test.
#[allow(dead_code)] // not every test file boots the patched module
pub fn patched_module(vm: &vm::Vm) -> PathBuf {
    let release = &vm.assets().release;
    let ko = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/kernel").join(release).join("bcache.ko");
    assert!(ko.is_file(), "{} is missing: run kernel/build.sh {release}", ko.display());
    ko
}

/// Deterministic, incompressible test data (xorshift64).
#[allow(dead_code)]
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A guest shell function: `res CMD...` prints CMD's output and exit status
/// on one line ("... status=N"), for `emit`. Put it before a scenario.
#[allow(dead_code)]
pub const RES: &str = r#"res() { _o=$("$@" 2>&1) && _s=0 || _s=$?; printf '%s status=%s' "$(echo "$_o" | tr '\n' ' ')" "$_s"; }
"#;

/// A guest shell function: `same_files MOUNTPOINT PREFIX` checks every file
/// under /root/expect against its copy under MOUNTPOINT (checks named
/// PREFIX_FILE). Put it before a scenario.
#[allow(dead_code)]
pub const SAME_FILES: &str = r#"
same_files() {
    for f in /root/expect/*; do check "$2_${f##*/}" cmp "$f" "$1/${f##*/}"; done
}
"#;

/// An ext4 image `name` of `size` bytes in `scratch` holding `files` (name,
/// contents) at its root, made by mkfs.ext4 -d; with this file system uuid
/// when given.
#[allow(dead_code)]
pub fn ext4_with_files(
    scratch: &vm::Scratch,
    name: &str,
    size: u64,
    files: &[(String, Vec<u8>)],
    uuid: Option<&str>,
) -> PathBuf {
    let dir = scratch.path().join(format!("{name}.d"));
    std::fs::create_dir_all(&dir).unwrap();
    for (file, data) in files {
        std::fs::write(dir.join(file), data).unwrap();
    }
    let img = scratch.image(name, size);
    let mut mkfs = std::process::Command::new("mkfs.ext4");
    mkfs.args(["-q", "-F"]);
    if let Some(u) = uuid {
        mkfs.args(["-U", u]);
    }
    let ok = mkfs.arg("-d").arg(&dir).arg(&img).status().expect("mkfs.ext4 (e2fsprogs)").success();
    assert!(ok, "mkfs.ext4 -d {} failed", dir.display());
    img
}
