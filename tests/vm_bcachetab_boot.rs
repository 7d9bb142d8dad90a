//! bcachetab through the boot integration: a Debian userland guest with
//! systemd and a real systemd-udevd running the project's installed rules
//! (udev/61-bcachetab.rules, udev/69-bcache.rules) and unit
//! (systemd/bcachetab-wait@.service). Every `run` is a boot on the same
//! disks; /etc/bcachetab and the state file live on the guest's persistent
//! system disk. Each scenario runs on the stock kernel (dm-linear header
//! layout) and on the patched module (register_raw).

mod common;

use std::path::PathBuf;

use common::many::{guest, ManyDevices, MANY};
use common::vm::{Scratch, Vm, VmOutput};
use common::{pattern, SAME_FILES};

const MIB: u64 = 1 << 20;
const EXT4_UUID: &str = "3f0a7c1e-52b4-4d8e-9b61-0c2d4e6f8a01";
const XFS_UUID: &str = "8c3e5a71-0d2f-4b6a-9e14-7f5b3c2d1a09";

fn file_data(i: u64) -> Vec<u8> {
    pattern(150_000 + i as usize * 40_009, 0xf11e + i)
}

/// Test files under /root/expect in the guest.
fn expect_files(vm: &mut Vm) {
    for i in 0..4 {
        vm.file(&format!("/root/expect/file{i}"), file_data(i), false);
    }
}

fn ext4_with_files(scratch: &Scratch) -> PathBuf {
    let files: Vec<_> = (0..4).map(|i| (format!("file{i}"), file_data(i))).collect();
    common::ext4_with_files(scratch, "ext4.img", 64 * MIB, &files, Some(EXT4_UUID))
}

fn boot_report(n: u32, out: &VmOutput) {
    eprintln!("boot {n}: {:.1} s in QEMU", out.elapsed.as_secs_f64());
}

/// An existing ext4 (writethrough) and XFS (writeback) are adopted with one
/// cache; files are written through the writeback one; the machine loses
/// power. Booted without the cache (a blank disk in its place), neither
/// comes up and `bcache tab list` says why; booted with it, udev brings both
/// up with every file, the raw devices hidden behind their bcache devices.
fn adopt_power_cut_reboot(patched: bool) {
    let scratch = Scratch::new();
    let system = scratch.system_disk("system.img");
    let ext4 = ext4_with_files(&scratch);
    let xfs = scratch.image("xfs.img", 320 * MIB);
    let cache = scratch.image("cache.img", 300 * MIB);
    let late = pattern(5 << 20, 0x1a7e);

    let mut vm = guest(&system, patched);
    vm.disk(&ext4).disk(&xfs).disk(&cache).file("/root/late.bin", late.clone(), false);
    expect_files(&mut vm);
    let layout = if patched { "raw" } else { "header" };
    let out = vm.run(&format!(
        r#"{SAME_FILES}
        # The XFS file system exists before bcache comes: made and filled here.
        check mkfs_xfs mkfs.xfs -q -m uuid={XFS_UUID} /dev/vdb
        mkdir -p /mnt/x /mnt/e
        mount /dev/vdb /mnt/x && cp /root/expect/* /mnt/x/ && umount /mnt/x
        check make_cache bcache make -C /dev/vdc
        wait_until 30 test -e /sys/block/vdc/bcache
        check adopt_ext4 bcache adopt /dev/vda --cache /dev/vdc --name e
        check adopt_xfs bcache adopt /dev/vdb --cache /dev/vdc --writeback --name x -o writeback_percent=40
        udevadm settle
        wait_for /dev/bcache/e
        wait_for /dev/bcache/x
        section list bcache tab list
        check mount_x mount /dev/bcache/x /mnt/x
        same_files /mnt/x boot1_x
        check write_late cp /root/late.bin /mnt/x/late.bin
        check umount_x umount /mnt/x
        emit x_state "$(cat /sys/block/$(basename $(readlink -f /dev/bcache/x))/bcache/state)"
        section tab cat /etc/bcachetab
        section state cat /var/lib/bcache/state
        sync /etc/bcachetab /var/lib/bcache/state
        power_cut
        "#
    ));
    boot_report(1, &out);
    out.assert_ok();
    assert_eq!(out.expect_value("x_state"), "dirty", "the late file is dirty in the cache at the power cut");
    let state = out.section("state");
    assert!(state.matches(&format!("layout={layout}")).count() == 2, "{state}");

    // Boot 2: the cache disk is gone (blank in its place).
    let blank = scratch.image("blank.img", 300 * MIB);
    let mut vm2 = guest(&system, patched);
    vm2.disk(&ext4).disk(&xfs).disk(&blank);
    let out2 = vm2.run(
        r#"
        udevadm settle
        section list bcache tab list
        emit bcache_devices "$(ls /sys/block | grep -c '^bcache' || true)"
        emit ready_vda "$(udevadm info -q property -n /dev/vda | grep '^SYSTEMD_READY=' || true)"
        "#,
    );
    boot_report(2, &out2);
    out2.assert_ok();
    assert_eq!(out2.expect_value("bcache_devices"), "0", "a device ran without its cache set");
    let list = out2.section("list");
    assert!(list.lines().filter(|l| l.contains("waiting for cache set")).count() == 2, "{list}");
    assert!(list.contains("dirty data"), "the writeback device says it may hold dirty data: {list}");
    assert_eq!(out2.expect_value("ready_vda"), "SYSTEMD_READY=0");

    // Boot 3: the cache is back: udev brings everything up.
    let mut vm3 = guest(&system, patched);
    vm3.disk(&ext4).disk(&xfs).disk(&cache).file("/root/late.bin", late, false);
    expect_files(&mut vm3);
    // A raw registration's state changes come as change events on the raw
    // disk (BCACHE_RAW): recorded in the state file (nothing else writes the
    // mode there when sysfs is written directly), the disk kept hidden by what
    // udev's database holds (bcachetab is moved away: a match would find no line).
    let raw_event = if !patched {
        String::new()
    } else {
        format!(
            r#"
        mv /etc/bcachetab /etc/bcachetab.aside
        echo writearound > /sys/block/$(basename $E)/bcache/cache_mode
        check mode_recorded wait_until 60 grep -q 'mode=writearound' /var/lib/bcache/state
        udevadm settle
        emit vda_ready_after "$(udevadm info -q property -n /dev/vda | grep '^SYSTEMD_READY=' || true)"
        emit vda_links_after "$(udevadm info -q symlink -n /dev/vda)"
        check_eq ext4_by_uuid_after $E "$(readlink -f /dev/disk/by-uuid/{EXT4_UUID})"
        mv /etc/bcachetab.aside /etc/bcachetab
        echo writethrough > /sys/block/$(basename $E)/bcache/cache_mode
        check mode_back wait_until 60 grep -q 'mode=writethrough' /var/lib/bcache/state
        "#
        )
    };
    let out3 = vm3.run(&format!(
        r#"{SAME_FILES}
        udevadm settle
        wait_for /dev/bcache/e
        wait_for /dev/bcache/x
        section list bcache tab list
        mkdir -p /mnt/x /mnt/e
        check mount_e mount -o ro /dev/bcache/e /mnt/e
        same_files /mnt/e e
        check mount_x mount -o ro /dev/bcache/x /mnt/x
        same_files /mnt/x x
        check late_file cmp /root/late.bin /mnt/x/late.bin
        umount /mnt/e /mnt/x
        check_eq ext4_by_uuid "$(readlink -f /dev/bcache/e)" "$(readlink -f /dev/disk/by-uuid/{EXT4_UUID})"
        check_eq xfs_by_uuid "$(readlink -f /dev/bcache/x)" "$(readlink -f /dev/disk/by-uuid/{XFS_UUID})"
        emit vda_links "$(udevadm info -q symlink -n /dev/vda)"
        emit vdb_links "$(udevadm info -q symlink -n /dev/vdb)"
        # A change event without the kernel's CACHED_UUID, as udev makes one
        # when a writer closes the device (fsck, mkfs): the links stay.
        E=$(readlink -f /dev/bcache/e)
        emit e_links_before "$(udevadm info -q symlink -n $E | tr ' ' '\n' | grep ^bcache/ | sort | tr '\n' ' ')"
        check change_event udevadm trigger --settle --action=change $E
        emit e_links_after "$(udevadm info -q symlink -n $E | tr ' ' '\n' | grep ^bcache/ | sort | tr '\n' ' ')"
        check_eq name_link_after_change $E "$(readlink -f /dev/bcache/e)"
        {raw_event}
        emit cutoff "$(cat /sys/block/$(basename $(readlink -f /dev/bcache/x))/bcache/writeback_percent)"
        emit registered "$(dmesg | grep -c 'registered backing device' || true)"
        "#
    ));
    boot_report(3, &out3);
    out3.assert_ok();
    for dev in ["vda_links", "vdb_links"] {
        let links = out3.expect_value(dev);
        assert!(!links.contains("by-uuid") && !links.contains("by-label"), "{dev}: {links}");
    }
    // bcache/e, bcache/by-name/e, bcache/by-uuid/UUID
    let before = out3.expect_value("e_links_before");
    assert_eq!(before.split_whitespace().count(), 3, "the bcache device's links: {before}");
    assert_eq!(out3.expect_value("e_links_after"), before, "links after a change event without CACHED_UUID");
    if patched {
        assert_eq!(out3.expect_value("vda_ready_after"), "SYSTEMD_READY=0", "the raw disk is hidden after it");
        let set = |key: &str| out3.expect_value(key).split_whitespace().collect::<std::collections::BTreeSet<_>>();
        assert_eq!(set("vda_links_after"), set("vda_links"), "the raw disk's links after it");
    }
    assert_eq!(out3.expect_value("cutoff"), "40", "tunables from bcachetab are applied at boot");
    assert_eq!(out3.expect_value("registered"), "2", "each device registered once");
}

#[test]
fn stock_kernel_adopted_devices_come_back_through_udev() {
    adopt_power_cut_reboot(false);
}

#[test]
fn patched_module_adopted_devices_come_back_through_udev() {
    adopt_power_cut_reboot(true);
}

/// Writethrough with an ephemeral cache: at boot a blank disk is where the
/// cache was. The device waits for its set until its timeout= passes, then
/// runs without it (bcachetab-wait@.service, started by the udev rule), data
/// intact; a new cache is made and attached, bcachetab follows, and the
/// next boot comes up with the new cache.
fn ephemeral_cache_timeout(patched: bool) {
    let scratch = Scratch::new();
    let system = scratch.system_disk("system.img");
    let ext4 = ext4_with_files(&scratch);
    let cache = scratch.image("cache.img", 300 * MIB);
    let note = pattern(700_000, 0x0e0e);

    let mut vm = guest(&system, patched);
    vm.disk(&ext4).disk(&cache).file("/root/note.bin", note.clone(), false);
    expect_files(&mut vm);
    let out = vm.run(
        r#"
        check make_cache bcache make -C /dev/vdb
        wait_until 30 test -e /sys/block/vdb/bcache
        check adopt bcache adopt /dev/vda --cache /dev/vdb --name eph -o timeout=5
        wait_for /dev/bcache/eph
        mkdir -p /mnt/e
        check mount mount /dev/bcache/eph /mnt/e
        check write_note cp /root/note.bin /mnt/e/note.bin
        check umount umount /mnt/e
        section state cat /var/lib/bcache/state
        "#,
    );
    boot_report(1, &out);
    out.assert_ok();
    assert!(out.section("state").contains("attached="), "{}", out.section("state"));

    // Boot 2: the cache disk came back blank (an ephemeral disk).
    let blank = scratch.image("blank.img", 300 * MIB);
    let mut vm2 = guest(&system, patched);
    vm2.disk(&ext4).disk(&blank).file("/root/note.bin", note.clone(), false);
    expect_files(&mut vm2);
    let out2 = vm2.run(&format!(
        r#"{SAME_FILES}
        udevadm settle
        wait_until 60 test -e /dev/bcache/eph || {{
            udevadm info -q property -n /dev/vda >&2
            systemctl list-units --all 'bcachetab*' >&2
            journalctl -b --no-pager -o cat | grep -iE 'bcache|udev' | tail -40 >&2
            fail "the device did not come up after its timeout"
        }}
        emit wait_unit "$(systemctl show -p Result --value 'bcachetab-wait@*' 2>/dev/null | head -1)"
        section journal journalctl -b -u 'bcachetab-wait@*' --no-pager -o cat
        mkdir -p /mnt/e
        check mount mount -o ro /dev/bcache/eph /mnt/e
        same_files /mnt/e e
        check note cmp /root/note.bin /mnt/e/note.bin
        umount /mnt/e
        section stale_state cat /var/lib/bcache/state
        # A new cache on the new disk, attached to the adopted device.
        check make_new_cache bcache make -C /dev/vdb
        wait_until 30 test -e /sys/block/vdb/bcache/set
        NEW=$(basename "$(readlink -f /sys/block/vdb/bcache/set)")
        check attach bcache attach "$NEW" /dev/bcache/eph
        B=$(basename "$(readlink -f /dev/bcache/eph)")
        wait_until 30 test -e /sys/block/$B/bcache/cache
        emit new_set "$NEW"
        section tab cat /etc/bcachetab
        section state cat /var/lib/bcache/state
        "#
    ));
    boot_report(2, &out2);
    out2.assert_ok();
    // The unit runs the device only if it still waits at the deadline (the
    // scenario may start after it, on a busy machine): its message is the
    // proof that the device waited for its set first.
    assert!(out2.section("journal").contains("did not come within 5s: running without it"), "{}", out2.section("journal"));
    assert!(out2.section("stale_state").contains("stale=1"), "{}", out2.section("stale_state"));
    let new_set = out2.expect_value("new_set").to_owned();
    assert!(out2.section("tab").contains(&new_set), "bcachetab follows the attach: {}", out2.section("tab"));
    let state = out2.section("state");
    assert!(state.contains(&format!("attached={new_set}")) && !state.contains("stale=1"), "{state}");

    // Boot 3: with the new cache, the device comes up attached to it.
    let mut vm3 = guest(&system, patched);
    vm3.disk(&ext4).disk(&blank);
    let out3 = vm3.run(&format!(
        r#"
        udevadm settle
        wait_for /dev/bcache/eph
        B=$(basename "$(readlink -f /dev/bcache/eph)")
        wait_until 30 test -e /sys/block/$B/bcache/cache
        check_eq attached_to_new {new_set} "$(basename "$(readlink -f /sys/block/$B/bcache/cache)")"
        "#
    ));
    boot_report(3, &out3);
    out3.assert_ok();
}

#[test]
fn stock_kernel_ephemeral_cache_times_out_and_a_new_one_attaches() {
    ephemeral_cache_timeout(false);
}

#[test]
fn patched_module_ephemeral_cache_times_out_and_a_new_one_attaches() {
    ephemeral_cache_timeout(true);
}

/// 24 adopted devices (half writeback, half writethrough) on one cache;
/// their udev events run in parallel at every boot. Five boots in a row:
/// every device up each time, each registered once, nothing refused; and
/// the time from the last disk's udev initialisation to the last bcache
/// device's, reported (bench/boot.rs compares the layouts).
fn many_devices_five_boots(patched: bool) {
    let many = ManyDevices::new(patched);
    let out = many.adopt();
    boot_report(1, &out);
    for n in 2..=6 {
        let boot = many.boot(n);
        boot_report(n, &boot.out);
        eprintln!("boot {n}: last disk initialised by udev -> last of {MANY} bcache devices: {} ms", boot.settle_ms);
    }
}

#[test]
fn stock_kernel_24_devices_five_boots() {
    many_devices_five_boots(false);
}

#[test]
fn patched_module_24_devices_five_boots() {
    many_devices_five_boots(true);
}
