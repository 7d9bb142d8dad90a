//! bcachetab in the real kernel, driven by hand in the busybox guest:
//! adopt an existing file system, attach a cache in writeback, lose power,
//! and bring it back from bcachetab and the state file alone — on the
//! stock kernel (dm-linear header) and on the patched module (register_raw).
//! The boot integration (udev, initramfs) is proven in vm_bcachetab_boot.rs.

mod common;

use common::vm::{Scratch, Vm};
use common::{pattern, RES};

const MIB: u64 = 1 << 20;

const FILES: u64 = 4;

fn file_data(i: u64) -> Vec<u8> {
    pattern(200_000 + i as usize * 50_021, 0xab00 + i)
}

/// The files of [`filesystem`], under /root/expect in the guest.
fn expect_files(vm: &mut Vm) {
    for i in 0..FILES {
        vm.file(&format!("/root/expect/file{i}"), file_data(i), false);
    }
}

/// An ext4 image holding the test files; they are also put in the guest
/// under /root/expect for comparison.
fn filesystem(scratch: &Scratch, vm: &mut Vm) -> std::path::PathBuf {
    let files = scratch.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    for i in 0..FILES {
        std::fs::write(files.join(format!("file{i}")), file_data(i)).unwrap();
    }
    expect_files(vm);
    let disk = scratch.image("fs.img", 64 * MIB);
    let ok = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&files)
        .arg(&disk)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfs.ext4 -d (e2fsprogs) is needed");
    disk
}

fn guest(patched: bool) -> Vm {
    let mut vm = Vm::new();
    if patched {
        let ko = common::patched_module(&vm);
        vm.host_file(&ko, "/lib/modules/bcache.ko");
    }
    vm.module("ext4");
    vm
}

/// Copies bcachetab and the state file out of one boot into the next.
fn carry(vm: &mut Vm, out: &common::vm::VmOutput) {
    vm.file("/etc/bcachetab", out.section("bcachetab"), false);
    vm.file("/var/lib/bcache/state", out.section("state"), false);
}

const SAVE: &str = r#"
    section bcachetab cat /etc/bcachetab
    section state cat /var/lib/bcache/state
"#;

fn adopt_writeback_power_cut_and_back(patched: bool) {
    let layout = if patched { "raw" } else { "header" };
    let scratch = Scratch::new();
    let mut vm = guest(patched);
    let fs = filesystem(&scratch, &mut vm);
    let cache = scratch.image("cache.img", 300 * MIB);
    let extra = pattern(3 << 20, 0x5eed);
    vm.disk(&fs).disk(&cache).file("/root/extra.bin", extra.clone(), false);

    // Boot 1: adopt, attach in writeback, write, lose power.
    let out = vm.run(&format!(
        r#"{RES}
        check make_cache bcache make -C /dev/vdb
        check adopt bcache adopt /dev/vda --cache /dev/vdb --writeback --name data0 -o sequential_cutoff=1M
        wait_for /dev/bcache0
        section list bcache tab list
        emit json "$(bcache tab list --json | tr -d ' \n')"
        mkdir -p /mnt
        check mount mount -t ext4 /dev/bcache0 /mnt
        for f in /root/expect/*; do check "same_${{f##*/}}" cmp "$f" "/mnt/${{f##*/}}"; done
        check write_extra cp /root/extra.bin /mnt/extra.bin
        check umount umount /mnt
        emit dirty "$(cat /sys/block/bcache0/bcache/state)"
        emit cutoff "$(cat /sys/block/bcache0/bcache/sequential_cutoff)"
        {SAVE}
        power_cut
        "#
    ));
    out.assert_ok();
    let json = out.expect_value("json");
    assert!(json.contains(&format!("\"layout\":\"{layout}\"")), "{json}");
    assert!(json.contains("\"status\":\"up\""), "{json}");
    assert_eq!(out.expect_value("dirty"), "dirty");
    assert_eq!(out.expect_value("cutoff"), "1.0M", "the tunable from bcachetab");
    let tab = out.section("bcachetab");
    assert!(tab.contains("mode=writeback"), "{tab}");
    let state = out.section("state");
    assert!(state.contains(&format!("layout={layout}")) && state.contains("attached="), "{state}");

    // Boot 2: the cache disk is gone (a blank disk in its place): the
    // device must wait, and say why.
    let blank = scratch.image("blank.img", 300 * MIB);
    let mut vm2 = guest(patched);
    vm2.disk(&fs).disk(&blank);
    carry(&mut vm2, &out);
    let out2 = vm2.run(&format!(
        r#"{RES}
        emit apply "$(res bcache tab apply --all)"
        section list bcache tab list
        emit bcache0 "$(test -e /dev/bcache0 && echo present || echo absent)"
        emit check "$(res bcache tab check)"
        "#
    ));
    out2.assert_ok();
    assert_eq!(out2.expect_value("bcache0"), "absent", "a dirty device ran without its cache set");
    let list = out2.section("list");
    assert!(list.contains("waiting for cache set") && list.contains("dirty data"), "{list}");

    // Boot 3: the cache is back: the device comes up with every file, the
    // one still dirty in the cache at the power cut included.
    let mut vm3 = guest(patched);
    vm3.disk(&fs).disk(&cache).file("/root/extra.bin", extra, false);
    expect_files(&mut vm3);
    carry(&mut vm3, &out);
    let out3 = vm3.run(&format!(
        r#"{RES}
        check apply bcache tab apply --all
        section list_waiting bcache tab list
        check register_cache bcache register /dev/vdb
        wait_for /dev/bcache0
        section list bcache tab list
        mkdir -p /mnt
        check mount mount -t ext4 /dev/bcache0 /mnt
        for f in /root/expect/*; do check "same_${{f##*/}}" cmp "$f" "/mnt/${{f##*/}}"; done
        check same_extra cmp /root/extra.bin /mnt/extra.bin
        check umount umount /mnt
        emit again "$(res bcache tab apply --all)"
        "#
    ));
    out3.assert_ok();
    assert!(out3.section("list").contains("up: /dev/bcache0"), "{}", out3.section("list"));
    assert!(out3.expect_value("again").ends_with("status=0"), "apply is idempotent");
}

#[test]
fn stock_kernel_header_layout_survives_power_loss() {
    adopt_writeback_power_cut_and_back(false);
}

#[test]
fn patched_module_raw_layout_survives_power_loss() {
    adopt_writeback_power_cut_and_back(true);
}
