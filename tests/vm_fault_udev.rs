//! Fault cells under the real boot integration (issue 8 item 7, beside
//! tests/vm_fault_matrix.rs, whose busybox guests stand a recorder in for
//! udev): a Debian guest where systemd-udevd runs the project's rules
//! (udev/61-bcachetab.rules, udev/69-bcache.rules) and, with systemd,
//! bcachetab-wait@.service, while the file system holding /var is full
//! (FAULT-MATRIX.md).
//! Both layouts: raw with the patched module, header on the stock kernel.
//!
//! Full means full for root too: the system disk's ext4 (the guest's root,
//! and so /var/lib/bcache) is filled with fallocated files, reserved blocks
//! included. It is freed before each power cut: the harness installs each
//! boot's files on that disk, so udev's events and the units meet the full
//! /var within a boot (replayed with `udevadm trigger`, or a unit waiting
//! when it fills up), not at its start.

mod common;

use std::path::PathBuf;

use common::many::guest;
use common::vm::{DebianInit, Scratch, Vm, VmOutput};
use common::{pattern, SAME_FILES};

const MIB: u64 = 1 << 20;
const FILES: u64 = 3;

fn file_data(i: u64) -> Vec<u8> {
    pattern(130_000 + i as usize * 20_021, 0x0dd0 + i)
}

/// The files written through bcache, boot by boot.
fn written(name: &str) -> Vec<u8> {
    let seed = name.bytes().fold(7u64, |h, b| h.wrapping_mul(131).wrapping_add(b as u64));
    pattern(3 << 20, seed)
}

/// Guest functions: fill the root file system (and so /var) to the last
/// block, prove it full, free it again; write a file through the device.
const LIB: &str = r#"
fill_root() {
    n=0
    for sz in 268435456 16777216 1048576 65536 4096; do
        while fallocate -l $sz /filler.$n 2>/dev/null; do n=$((n+1)); done
    done
    sync
}
var_is_full() {
    if sh -c 'echo x > /var/lib/bcache/.probe && sync /var/lib/bcache/.probe' 2>/dev/null; then
        rm -f /var/lib/bcache/.probe; return 1
    fi
    rm -f /var/lib/bcache/.probe; return 0
}
free_root() {
    rm -f /filler.*; sync
}
write_new() {
    mkdir -p /mnt/d
    mount /dev/bcache/d /mnt/d && cp /root/new/$1 /mnt/d/$1 && umount /mnt/d
}
device_state() {
    B=$(basename "$(readlink -f /dev/bcache/d)")
    cat /sys/block/$B/bcache/state
}
bcache_devices() {
    ls /sys/block | grep -c '^bcache' || true
}
"#;

struct Disks {
    _scratch: Scratch,
    system: PathBuf,
    ext4: PathBuf,
    cache: PathBuf,
    blank: PathBuf,
}

fn disks() -> Disks {
    let scratch = Scratch::new();
    let system = scratch.system_disk("system.img");
    let files: Vec<_> = (0..FILES).map(|i| (format!("file{i}"), file_data(i))).collect();
    let ext4 = common::ext4_with_files(&scratch, "ext4.img", 64 * MIB, &files, None);
    let cache = scratch.image("cache.img", 300 * MIB);
    let blank = scratch.image("blank.img", 300 * MIB);
    Disks { _scratch: scratch, system, ext4, cache, blank }
}

/// A boot with the ext4 as vda and `second` (the cache, or a blank disk in
/// its place) as vdb; the expected files, and those written so far, in
/// /root/expect.
fn boot(d: &Disks, patched: bool, init: DebianInit, cache: bool, expect: &[&str], script: &str) -> VmOutput {
    let mut vm: Vm = guest(&d.system, patched);
    vm.debian_init(init);
    vm.disk(&d.ext4).disk(if cache { &d.cache } else { &d.blank });
    for i in 0..FILES {
        vm.file(&format!("/root/expect/file{i}"), file_data(i), false);
    }
    for name in expect {
        vm.file(&format!("/root/expect/{name}"), written(name), false);
    }
    for name in ["b1", "b2"] {
        vm.file(&format!("/root/new/{name}"), written(name), false);
    }
    let out = vm.run(&format!("{SAME_FILES}{LIB}{script}"));
    eprintln!("{:.1} s in QEMU", out.elapsed.as_secs_f64());
    out
}

/// With /var full: `bcache adopt` is refused before anything is written.
/// A writeback device holding dirty data, its set and it stopped (as when
/// their disks go away), comes back under udev (`udevadm trigger`: 69-bcache
/// registers the cache, 61-bcachetab the device) while /var is full: its
/// record says all a registration needs, so it comes up with its set,
/// serves its files and takes more. The power is cut (what could not be
/// recorded is gone with /run). Without the cache it waits; with it, every
/// file written reads back.
fn dirty_device_with_var_full(patched: bool) {
    let d = disks();
    let out = boot(
        &d,
        patched,
        DebianInit::Udevd,
        true,
        &[],
        r#"
        check make_cache bcache make -C /dev/vdb
        wait_until 60 test -e /sys/block/vdb/bcache/set
        SET=$(basename "$(readlink -f /sys/block/vdb/bcache/set)")
        BEFORE=$(sha256sum < /dev/vda)
        fill_root
        check var_full var_is_full
        section refused_adopt sh -c 'bcache adopt /dev/vda --cache /dev/vdb --writeback --name d 2>&1; echo status=$?'
        check_eq disk_unchanged "$BEFORE" "$(sha256sum < /dev/vda)"
        emit lines "$(cat /etc/bcachetab 2>/dev/null | grep -c '^d ' || true)"
        emit registered "$(ls /sys/block/vda/bcache 2>/dev/null | wc -l)"
        free_root
        check adopt bcache adopt /dev/vda --cache /dev/vdb --writeback --name d -o writeback_running=0
        udevadm settle
        wait_for /dev/bcache/d
        check write_b1 write_new b1
        emit state_b1 "$(device_state)"
        # The device and its set go away, and come back under udev with
        # /var full.
        check stop bcache stop /dev/bcache/d
        wait_until 60 sh -c '! ls /sys/block | grep -q ^bcache'
        echo 1 > /sys/fs/bcache/$SET/stop
        wait_until 60 test ! -e /sys/fs/bcache/$SET
        fill_root
        check var_full_again var_is_full
        udevadm trigger --settle --action=add /dev/vdb
        wait_until 60 test -e /sys/fs/bcache/$SET
        udevadm trigger --settle --action=add /dev/vda
        wait_until 120 test -e /dev/bcache/d || { bcache tab list >&2; fail "the device did not come back with /var full"; }
        B=$(basename "$(readlink -f /dev/bcache/d)")
        wait_until 60 test -e /sys/block/$B/bcache/cache
        mkdir -p /mnt/d
        check mount mount -o ro /dev/bcache/d /mnt/d
        same_files /mnt/d full
        umount /mnt/d
        check write_b2 write_new b2
        emit state_b2 "$(device_state)"
        section list bcache tab list
        check still_full var_is_full
        free_root
        power_cut
        "#,
    );
    out.assert_ok();
    let refused = out.section("refused_adopt");
    assert!(refused.contains("nothing was changed") && refused.contains("status=1"), "{refused}");
    assert_eq!(out.expect_value("lines"), "0", "a refused adopt left a bcachetab line");
    assert_eq!(out.expect_value("registered"), "0", "a refused adopt registered the device");
    assert_eq!(out.expect_value("state_b1"), "dirty", "b1 is dirty in the cache");
    assert_eq!(out.expect_value("state_b2"), "dirty", "b2 is dirty in the cache at the cut");

    // Boot 2: the cache is gone: the device must wait.
    let out2 = boot(
        &d,
        patched,
        DebianInit::Udevd,
        false,
        &["b1", "b2"],
        r#"
        udevadm settle
        check wait_all bcache tab wait --all
        emit bcache_devices "$(bcache_devices)"
        section list bcache tab list
        "#,
    );
    out2.assert_ok();
    assert_eq!(out2.expect_value("bcache_devices"), "0", "a device with dirty data ran without its cache set");
    assert!(out2.section("list").contains("dirty data"), "{}", out2.section("list"));

    // Boot 3: the cache is back: every file of every boot.
    let out3 = boot(
        &d,
        patched,
        DebianInit::Udevd,
        true,
        &["b1", "b2"],
        r#"
        udevadm settle
        wait_for /dev/bcache/d
        mkdir -p /mnt/d
        check mount mount -o ro /dev/bcache/d /mnt/d
        same_files /mnt/d boot3
        umount /mnt/d
        "#,
    );
    out3.assert_ok();
    for f in (0..FILES).map(|i| format!("file{i}")).chain(["b1".into(), "b2".into()]) {
        assert!(out3.checks().iter().any(|c| c.name == format!("boot3_{f}")), "boot 3 compared {f}");
    }
}

/// A writethrough device with `timeout=` whose cache is gone: while
/// bcachetab-wait@.service (started by the udev rule at boot) waits, /var
/// fills up; at the deadline the unit cannot write the stale mark, so the
/// device must not run (else the cache's old copy would be served when it
/// returns). With the cache back, every file reads back.
fn timeout_run_with_var_full(patched: bool) {
    let d = disks();
    let out = boot(
        &d,
        patched,
        DebianInit::Udevd,
        true,
        &[],
        r#"
        check make_cache bcache make -C /dev/vdb
        wait_until 60 test -e /sys/block/vdb/bcache
        check adopt bcache adopt /dev/vda --cache /dev/vdb --name d -o timeout=90
        udevadm settle
        wait_for /dev/bcache/d
        check write_b1 write_new b1
        section state cat /var/lib/bcache/state
        sync
        power_cut
        "#,
    );
    out.assert_ok();

    // Boot 2: the cache is gone; systemd runs the wait unit; /var fills up
    // before its deadline.
    let out2 = boot(
        &d,
        patched,
        DebianInit::Systemd,
        false,
        &["b1"],
        r#"
        UNIT="bcachetab-wait@$(awk '$1 == "d" { print $3 }' /etc/bcachetab).service"
        wait_until 60 sh -c "systemctl show -p ExecMainStartTimestampMonotonic --value $UNIT | grep -qv '^0$'" || {
            systemctl status --no-pager "$UNIT" >&2; fail "the wait unit did not start"
        }
        fill_root
        check var_full var_is_full
        emit waiting_when_full "$(systemctl show -p ActiveState --value $UNIT)"
        wait_until 300 sh -c "systemctl show -p ActiveState --value $UNIT | grep -qE '^(failed|inactive)$'" || {
            systemctl status --no-pager "$UNIT" >&2; fail "the wait unit did not end"
        }
        emit result "$(systemctl show -p Result --value $UNIT)"
        section journal journalctl -b -u "$UNIT" --no-pager -o cat
        emit bcache_devices "$(bcache_devices)"
        emit running "$(cat /sys/block/vda/bcache/running /sys/block/dm-*/bcache/running 2>/dev/null | head -1)"
        free_root
        "#,
    );
    out2.assert_ok();
    assert_eq!(out2.expect_value("waiting_when_full"), "activating", "the unit had ended before /var was full");
    assert_eq!(out2.expect_value("bcache_devices"), "0", "the device ran without its set although its stale mark could not be written");
    assert_eq!(out2.expect_value("running"), "0", "registered and waiting");
    let journal = out2.section("journal");
    assert!(journal.contains("cannot record") && journal.contains("nothing was changed"), "{journal}");
    assert_ne!(out2.expect_value("result"), "success", "{journal}");

    // Boot 3: the cache is back: every file, none of the cache's older.
    let out3 = boot(
        &d,
        patched,
        DebianInit::Udevd,
        true,
        &["b1"],
        r#"
        udevadm settle
        wait_for /dev/bcache/d
        mkdir -p /mnt/d
        check mount mount -o ro /dev/bcache/d /mnt/d
        same_files /mnt/d boot3
        umount /mnt/d
        "#,
    );
    out3.assert_ok();
}

#[test]
fn dirty_device_with_var_full_under_udev_raw() {
    dirty_device_with_var_full(true);
}

#[test]
fn dirty_device_with_var_full_under_udev_header() {
    dirty_device_with_var_full(false);
}

#[test]
fn timeout_run_with_var_full_under_systemd_raw() {
    timeout_run_with_var_full(true);
}

#[test]
fn timeout_run_with_var_full_under_systemd_header() {
    timeout_run_with_var_full(false);
}
