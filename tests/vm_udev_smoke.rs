//! The Debian userland guest (`Vm::debian`): a real systemd-udevd with the host's
//! and the test's udev rules, modprobe from the kernel package's module tree (the
//! patched bcache.ko taking precedence), a system disk that carries /etc across
//! reboots, and a hard kill that still returns the output up to it.

mod common;

use common::vm::{DebianInit, Scratch, Vm, VmOutput};
use std::process::Command;

const UUID: &str = "5e1f0c2a-7b3d-4e8f-9a6b-1c2d3e4f5a6b";
const RULE: &str = r#"# test rule: a link for the file system labelled smoke-label
SUBSYSTEM=="block", ENV{ID_FS_LABEL}=="smoke-label", SYMLINK+="smoke/by-test-rule"
"#;

fn boot_time(n: u32, out: &VmOutput) {
    eprintln!(
        "boot {n}: scenario started at {} s of guest uptime, {:.1} s in QEMU (TCG)",
        out.scenario_start.map(|s| format!("{s:.1}")).unwrap_or_else(|| "?".into()),
        out.elapsed.as_secs_f64()
    );
}

#[test]
fn udev_rules_modules_persistence_and_hard_kill() {
    let scratch = Scratch::new();
    let system = scratch.system_disk("system.img");
    let data = scratch.image("data.img", 64 << 20);
    let mkfs = Command::new("mkfs.ext4").args(["-q", "-F", "-L", "smoke-label", "-U", UUID]).arg(&data).status().expect("mkfs.ext4 (e2fsprogs)");
    assert!(mkfs.success());

    let mut vm = Vm::debian(&system);
    let ko = common::patched_module(&vm);
    vm.disk(&data).module_override(&ko).file("/etc/udev/rules.d/90-bcache-vm-smoke.rules", RULE, false);

    // Boot 1: systemd, udev's own rules and the test's, modprobe, a file in /etc.
    let out = vm.run(&format!(
        r#"
        check_eq pid1_is_systemd systemd "$(cat /proc/1/comm)"
        check udev_running udevadm control --ping
        check_eq by_uuid /dev/vda "$(readlink -f /dev/disk/by-uuid/{UUID})"
        check_eq test_rule_link /dev/vda "$(readlink -f /dev/smoke/by-test-rule)"
        check project_rule_is_ours grep -q 'bcache probe -o udev' /usr/lib/udev/rules.d/69-bcache.rules
        check modprobe_dm modprobe dm_mod
        check modprobe_bcache modprobe bcache
        check patched_bcache_loaded test -e /sys/fs/bcache/register_raw
        emit bcache_module "$(modinfo -n bcache)"
        emit system_disk "$VM_SYSTEM_DISK"
        echo boot1 > /etc/bcache-vm-smoke
        "#
    ));
    boot_time(1, &out);
    assert!(out.value("bcache_module").unwrap().ends_with("/updates/bcache.ko"), "modprobe resolves bcache to {:?}", out.value("bcache_module"));
    out.assert_value("system_disk", "/dev/vdb");
    assert!(out.console.contains("reboot: Power down"), "boot 1 did not power off cleanly:\n{}", out.report());

    // Boot 2: same disks; /etc kept; then a hard kill with unsynced writes pending.
    let out = vm.run(
        r#"
        check_eq etc_survived boot1 "$(cat /etc/bcache-vm-smoke)"
        echo boot2 > /etc/bcache-vm-smoke
        sync
        emit before_cut yes
        echo lost > /etc/bcache-vm-unsynced
        power_cut
        emit after_cut yes
        "#,
    );
    boot_time(2, &out);
    out.assert_value("before_cut", "yes");
    assert_eq!(out.value("after_cut"), None, "the scenario went on after power_cut");
    assert!(!out.console.contains("reboot: Power down"), "boot 2 powered off cleanly instead of a hard kill:\n{}", out.report());

    // Boot 3: udevd by hand (no systemd); the system disk's ext4 needed recovery.
    let out = vm.debian_init(DebianInit::Udevd).run(
        r#"
        check_eq pid1_is_guest_sh bash "$(cat /proc/1/comm)"
        check udev_running udevadm control --ping
        check_eq test_rule_link /dev/vda "$(readlink -f /dev/smoke/by-test-rule)"
        check_eq synced_write_survived boot2 "$(cat /etc/bcache-vm-smoke)"
        emit unsynced "$(cat /etc/bcache-vm-unsynced 2>/dev/null || echo absent)"
        "#,
    );
    boot_time(3, &out);
    assert!(
        out.dmesg.lines().any(|l| l.contains("EXT4-fs (vdb): recovery complete")),
        "the system disk was not recovered after the hard kill:\n{}",
        out.report()
    );
    eprintln!("write not synced before the hard kill, after it: {}", out.expect_value("unsynced"));
}
