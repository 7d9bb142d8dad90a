//! bcachetab in the real kernel, driven by hand in the busybox guest:
//! adopt an existing file system, attach a cache in writeback, lose power,
//! and bring it back from bcachetab and the state file alone — on the
//! stock kernel (dm-linear header) and on the patched module (register_raw).
//! The boot integration (udev, initramfs) is proven in vm_bcachetab_boot.rs.

mod common;

use common::vm::{Scratch, Vm};
use common::{pattern, RES, SAME_FILES};

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
    expect_files(vm);
    let files: Vec<_> = (0..FILES).map(|i| (format!("file{i}"), file_data(i))).collect();
    common::ext4_with_files(scratch, "fs.img", 64 * MIB, &files, None)
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
        r#"{RES}{SAME_FILES}
        check make_cache bcache make -C /dev/vdb
        check adopt bcache adopt /dev/vda --cache /dev/vdb --writeback --name data0 -o sequential_cutoff=1M
        wait_for /dev/bcache0
        section list bcache tab list
        emit json "$(bcache tab list --json | tr -d ' \n')"
        mkdir -p /mnt
        check mount mount -t ext4 /dev/bcache0 /mnt
        same_files /mnt same
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
        emit apply_dev "$(res bcache tab apply /dev/vda)"
        emit apply "$(res bcache tab apply --all)"
        section list bcache tab list
        emit bcache0 "$(test -e /dev/bcache0 && echo present || echo absent)"
        emit check "$(res bcache tab check)"
        "#
    ));
    out2.assert_ok();
    assert_eq!(out2.expect_value("bcache0"), "absent", "a dirty device ran without its cache set");
    // the line found from the device itself (bcachetab-apply DEV)
    let apply_dev = out2.expect_value("apply_dev");
    assert!(apply_dev.contains("/etc/bcachetab:") && apply_dev.contains("waiting for cache set"), "{apply_dev}");
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
        {SAME_FILES}
        check apply bcache tab apply /dev/vda
        section list_waiting bcache tab list
        check register_cache bcache register /dev/vdb
        wait_for /dev/bcache0
        section list bcache tab list
        mkdir -p /mnt
        check mount mount -t ext4 /dev/bcache0 /mnt
        same_files /mnt same
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

/// A forced run without the cache set marks the device stale in the state
/// file; at the next boot the set's old (dirty) data for it is dropped
/// when it attaches, never served over what was written since.
#[test]
fn forced_run_is_recorded_stale_and_old_cache_data_is_never_served() {
    forced_run_then_cache_back(false);
}

/// Finding: `bcache run --force` on a device with no record printed
/// "marked stale" and recorded nothing (the state file lost, or a line
/// written by hand). Now the forced run creates the record, before the
/// kernel runs the device.
#[test]
fn forced_run_without_a_record_creates_one_and_old_cache_data_is_never_served() {
    forced_run_then_cache_back(true);
}

fn forced_run_then_cache_back(no_record: bool) {
    let scratch = Scratch::new();
    let backing = scratch.image("backing.img", 64 * MIB);
    let cache = scratch.image("cache.img", 300 * MIB);
    // Data at 8 MiB: A on the disk before adoption, B written through the
    // cache (dirty at the power cut; some of it may have been written back),
    // C written while the cache is away.
    let (a, b, c) = (pattern(MIB as usize, 0xa), pattern(MIB as usize, 0xb), pattern(MIB as usize, 0xc));
    let file = std::fs::OpenOptions::new().write(true).open(&backing).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &a, 8 * MIB).unwrap();
    drop(file);
    const AT: &str = "bs=1M seek=8 count=1";
    const READ: &str = "bs=1M skip=8 count=1";

    let mut vm = guest(false);
    vm.disk(&backing).disk(&cache).file("/root/b", b.clone(), false);
    // A disk with no file system and no by-id link (no udev here) has no
    // name that follows it: --force, its recorded identity guards it.
    let out = vm.run(&format!(
        r#"{RES}
        check make_cache bcache make -C /dev/vdb
        check adopt bcache adopt /dev/vda --cache /dev/vdb --writeback --name d --force
        wait_for /dev/bcache0
        check write_b dd if=/root/b of=/dev/bcache0 {AT} oflag=direct
        emit state "$(cat /sys/block/bcache0/bcache/state)"
        {SAVE}
        power_cut
        "#
    ));
    assert_eq!(out.expect_value("state"), "dirty");

    let blank = scratch.image("blank.img", 300 * MIB);
    let mut vm2 = guest(false);
    vm2.disk(&backing).disk(&blank).file("/root/c", c.clone(), false);
    carry(&mut vm2, &out);
    // The record lost after the device was registered (the state file
    // deleted, or a line for a device registered by hand).
    let forget = if no_record { "rm /var/lib/bcache/state" } else { "" };
    let out2 = vm2.run(&format!(
        r#"{RES}
        bcache tab apply --all || true
        {forget}
        D=/dev/$(ls /sys/block | grep '^dm-' | head -1)
        emit plain_run "$(res bcache run $D)"
        emit forced "$(res bcache run --force $D)"
        section state_after_run cat /var/lib/bcache/state
        wait_for /dev/bcache0
        check write_c dd if=/root/c of=/dev/bcache0 {AT} oflag=direct
        section list bcache tab list
        {SAVE}
        "#
    ));
    out2.assert_ok();
    assert!(out2.expect_value("plain_run").contains("--force"), "{}", out2.expect_value("plain_run"));
    assert!(out2.expect_value("forced").contains("marked stale"), "{}", out2.expect_value("forced"));
    // Recorded by the forced run itself, before anything reads the kernel's
    // view back (tab list reconciles).
    assert!(out2.section("state_after_run").contains("stale=1"), "{}", out2.section("state_after_run"));
    assert!(out2.section("state").contains("stale=1"), "{}", out2.section("state"));

    let mut vm3 = guest(false);
    vm3.disk(&backing).disk(&cache).file("/root/c", c, false);
    carry(&mut vm3, &out2);
    let out3 = vm3.run(&format!(
        r#"{RES}
        check apply bcache tab apply --all
        wait_for /dev/bcache0
        check register_cache bcache register /dev/vdb
        wait_until 30 test -e /sys/block/bcache0/bcache/cache
        check reads_c_not_the_cached_b sh -c 'dd if=/dev/bcache0 {READ} iflag=direct 2>/dev/null | cmp - /root/c'
        {SAVE}
        "#
    ));
    out3.assert_ok();
    let state = out3.section("state");
    assert!(!state.contains("stale=1") && state.contains("attached="), "attached again, afresh: {state}");
}

/// Bad lines are each reported as FILE:LINE, the good lines still come up,
/// and the exit status says something failed; nothing is written to any
/// device.
#[test]
fn bad_bcachetab_lines_are_reported_and_the_rest_applied() {
    let scratch = Scratch::new();
    let mut vm = guest(false);
    let disks: Vec<_> = (0..5).map(|i| scratch.image(&format!("d{i}.img"), 16 * MIB)).collect();
    for (i, d) in disks.iter().enumerate() {
        let file = std::fs::OpenOptions::new().write(true).open(d).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, &pattern(64 << 10, i as u64 + 1), 0).unwrap();
        vm.disk(d);
    }
    let before: Vec<Vec<u8>> = disks.iter().map(|d| std::fs::read(d).unwrap()).collect();
    let set = "0a9e1f4c-57d1-4bb8-a2f0-3e0c9fd1e0aa";
    let u = |n: u32| format!("6f1c1e0a-3b44-4e0b-9c57-1f0f0b6a7d{n:02}");
    let tab = format!(
        "# a good line, then one of each problem, then a good line\n\
         good0 /dev/vda {u0} -\n\
         opt /dev/vdb {u1} - mode=writeback,turbo=1\n\
         dup /dev/vdc {u0} -\n\
         baduuid /dev/vdc 6f1c1e0a-3b44-4e0b-9c57 -\n\
         gone /dev/disk/by-id/no-such-disk {u2} -\n\
         switch /dev/vdd {u3} {set} mode=writeback\n\
         good1 /dev/vde {u4} -\n",
        u0 = u(0),
        u1 = u(1),
        u2 = u(2),
        u3 = u(3),
        u4 = u(4),
    );
    // /dev/vdd was used with register_raw and holds dirty data in its set.
    let state = format!("{} layout=raw attached={set} state=dirty mode=writeback\n", u(3));
    vm.file("/etc/bcachetab", tab, false).file("/var/lib/bcache/state", state, false);
    let out = vm.run(&format!(
        r#"{RES}
        bcache tab apply --all > /tmp/out 2> /tmp/err && emit apply_status 0 || emit apply_status $?
        section stderr cat /tmp/err
        section stdout cat /tmp/out
        emit check_status "$(bcache tab check >/dev/null 2>&1; echo $?)"
        emit up "$(ls /sys/block | grep -c '^bcache')"
        section list bcache tab list
        "#
    ));
    out.assert_ok();
    assert_eq!(out.expect_value("apply_status"), "1");
    assert_eq!(out.expect_value("check_status"), "1");
    assert_eq!(out.expect_value("up"), "2", "good0 and good1 up");
    let err = out.section("stderr");
    for (line, what) in [
        (3, "options: unknown option 'turbo'"),
        (4, "uuid: uuid already used on line 2"),
        (5, "uuid: '6f1c1e0a-3b44-4e0b-9c57' is not a uuid"),
        (6, "no device is /dev/disk/by-id/no-such-disk"),
        (7, "its layout is recorded as raw but would now be header"),
    ] {
        let want = format!("/etc/bcachetab:{line}: ");
        assert!(
            err.lines().any(|l| l.contains(&want) && l.contains(what)),
            "no '{want}... {what}' in:\n{err}"
        );
    }
    assert_eq!(err.lines().count(), 5, "one line per problem:\n{err}");
    let list = out.section("list");
    assert!(
        list.lines().any(|l| l.contains("switch") && l.contains("down: its layout is recorded as raw")),
        "tab list says why the device is down:\n{list}"
    );
    let stdout = out.section("stdout");
    assert!(stdout.contains("/etc/bcachetab:2: /dev/vda: up") && stdout.contains("/etc/bcachetab:8: /dev/vde: up"), "{stdout}");
    for (d, b) in disks.iter().zip(&before) {
        assert!(&std::fs::read(d).unwrap() == b, "{} changed", d.display());
    }
}

/// `bcachetab-apply DEV` finds the line that names DEV through a link
/// (the /dev/disk/by-id form `bcache adopt` prefers), whether DEV is the
/// device or the link, and not a line naming another device's link.
#[test]
fn device_argument_finds_its_line_through_a_link() {
    let scratch = Scratch::new();
    let (mine, other) = (scratch.image("mine.img", 64 * MIB), scratch.image("other.img", 64 * MIB));
    let mut vm = guest(true);
    vm.disk(&mine).disk(&other).file(
        "/etc/bcachetab",
        "other /dev/disk/by-id/virtio-other 4e4e4e4e-0000-4000-8000-000000000001 - -\n\
         mine  /dev/disk/by-id/virtio-mine  4e4e4e4e-0000-4000-8000-000000000002 - -\n",
        false,
    );
    let out = vm.run(&format!(
        r#"{RES}
        # the links udev would make (no udev in this guest)
        mkdir -p /dev/disk/by-id
        ln -s ../../vda /dev/disk/by-id/virtio-mine
        ln -s ../../vdb /dev/disk/by-id/virtio-other
        emit by_device "$(res bcache tab apply /dev/vda)"
        emit by_link "$(res bcache tab apply /dev/disk/by-id/virtio-mine)"
        emit mine "$(test -e /sys/block/vda/bcache && echo registered || echo not)"
        emit other "$(test -e /sys/block/vdb/bcache && echo registered || echo not)"
        "#
    ));
    out.assert_ok();
    let by_device = out.expect_value("by_device");
    assert!(by_device.starts_with("/etc/bcachetab:2: /dev/vda: up: /dev/bcache") && by_device.ends_with("status=0"), "{by_device}");
    let by_link = out.expect_value("by_link");
    assert!(by_link.starts_with("/etc/bcachetab:2: /dev/vda: up: /dev/bcache") && by_link.ends_with("status=0"), "{by_link}");
    assert_eq!(out.expect_value("mine"), "registered");
    assert_eq!(out.expect_value("other"), "not", "the other line's device was brought up");
}
