//! Proves the QEMU harness (tests/common/vm.rs) against the real kernel: two disks
//! formatted on the host with the C bcache-tools, registered in the guest, data
//! written through /dev/bcache0 in writethrough mode, found on the host in the
//! backing image at the data offset, and found again after a second boot.
//!
//! Needs the VM assets (tests/vm/fetch-assets.sh), QEMU, busybox-static and, on the
//! host, bcache-tools (make-bcache, bcache-super-show).

mod common;

use common::pattern;
use common::vm::{self, DiskOptions, Scratch, Vm};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const PATTERN_LEN: usize = 256 * 1024;
/// Backing devices made by make-bcache without -o start their data at sector 16.
const DATA_OFFSET: u64 = 16 * 512;


fn host_tool(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{}: {e} (apt-get install bcache-tools)", args[0]));
    assert!(out.status.success(), "{args:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn super_show_field(dev: &Path, field: &str) -> String {
    let text = host_tool(&["bcache-super-show", dev.to_str().unwrap()]);
    text.lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
        .unwrap_or_else(|| panic!("no {field} in bcache-super-show output:\n{text}"))
}

fn vm_for(cache: &Path, backing: &Path, data: &[u8]) -> Vm {
    let mut vm = Vm::new();
    vm.disk_with(cache, DiskOptions { serial: Some("smoke-cache".into()), ..Default::default() })
        .disk_with(
            backing,
            DiskOptions {
                serial: Some("smoke-backing".into()),
                logical_block_size: Some(4096),
                physical_block_size: Some(4096),
                ..Default::default()
            },
        )
        .file("/root/pattern.bin", data.to_vec(), false)
        .c_bcache_tools();
    vm
}

#[test]
fn boot_register_write_and_persist() {
    let scratch = Scratch::new();
    let cache = scratch.image("cache.img", 64 * MIB);
    let backing = scratch.image("backing.img", 64 * MIB);
    // 64 KiB buckets: 1024 of them (the kernel wants more than 512).
    host_tool(&["make-bcache", "-b", "64k", "-C", cache.to_str().unwrap(), "-B", backing.to_str().unwrap()]);
    let cset = super_show_field(&cache, "cset.uuid");
    assert_eq!(super_show_field(&backing, "cset.uuid"), cset);
    assert_eq!(super_show_field(&backing, "dev.data.first_sector"), "16");

    let data = pattern(PATTERN_LEN, 0x5eed_bcac_4e00_0001);
    let vm = vm_for(&cache, &backing, &data);

    let first = vm.run(
        r#"
        emit uname "$(uname -r)"
        emit cache_serial "$(cat /sys/block/vda/serial)"
        emit backing_serial "$(cat /sys/block/vdb/serial)"
        emit backing_lbs "$(cat /sys/block/vdb/queue/logical_block_size)"
        check bcache-is-module grep -q '^bcache ' /proc/modules
        check_eq bcache-module-live live "$(cat /sys/module/bcache/initstate)"
        check our-binary test -x /usr/sbin/bcache
        check_eq multicall-link bcache "$(readlink /usr/sbin/make-bcache)"
        section c-super-show /opt/c-tools/bcache-super-show /dev/vdb

        kmsg_mark register
        register /dev/vda /dev/vdb
        dev=$(bcache_of /dev/vdb)
        emit bcache_dev "$dev"
        wait_for /sys/block/vdb/bcache/cache
        emit cset "$(basename "$(readlink /sys/block/vdb/bcache/cache)")"
        emit cache_mode "$(cat /sys/block/vdb/bcache/cache_mode)"
        emit state "$(cat /sys/block/vdb/bcache/state)"

        dd if=/root/pattern.bin of="$dev" bs=64k oflag=direct conv=fsync 2>/dev/null
        echo 3 > /proc/sys/vm/drop_caches
        dd if="$dev" bs=64k count=4 iflag=direct 2>/dev/null > /tmp/readback
        check readback cmp /tmp/readback /root/pattern.bin
        emit sha256 "$(sha256sum < /tmp/readback | cut -d' ' -f1)"
        section sysfs-ls ls /sys/fs/bcache/
        dmesg_section register-dmesg register
        "#,
    );
    eprintln!(
        "first boot: {:.1} s in QEMU, initramfs built in {:.2} s, guest kernel {}",
        first.elapsed.as_secs_f64(),
        first.initramfs_build.as_secs_f64(),
        first.kernel_release
    );

    first.assert_value("uname", &vm.assets().release);
    first.assert_value("cache_serial", "smoke-cache");
    first.assert_value("backing_serial", "smoke-backing");
    first.assert_value("backing_lbs", "4096");
    first.assert_value("bcache_dev", "/dev/bcache0");
    first.assert_value("cset", &cset);
    first.assert_value("cache_mode", "[writethrough] writeback writearound none");
    first.assert_value("state", "clean");
    assert!(first.section("sysfs-ls").lines().any(|l| l.trim() == cset), "cache set not in /sys/fs/bcache:\n{}", first.section("sysfs-ls"));
    let shown = first.section("c-super-show");
    assert!(shown.lines().any(|l| l.starts_with("cset.uuid") && l.ends_with(&cset)), "C bcache-super-show in the guest:\n{shown}");
    let reg = first.dmesg_since("register").expect("mark in dmesg");
    assert!(reg.contains("bcache: register_bdev() registered backing device vdb"), "dmesg after register:\n{reg}");
    assert!(reg.contains(&format!("Caching vdb as bcache0 on set {cset}")), "backing device not attached:\n{reg}");
    let guest_side = first.section("register-dmesg");
    assert!(guest_side.contains("registered backing device vdb") && reg.starts_with(&guest_side), "guest-side dmesg_since:\n{guest_side}\nhost-side:\n{reg}");
    assert!(first.stderr.contains("+ register /dev/vda /dev/vdb"), "no trace on stderr:\n{}", first.stderr);
    assert!(!first.stdout.contains("+ register"), "trace leaked into stdout");

    // Writethrough: the data is on the backing image, after the 8 KiB header.
    assert_eq!(vm::read_at(&backing, DATA_OFFSET, PATTERN_LEN), data, "data not at byte {DATA_OFFSET} of the backing image");
    assert_eq!(&vm::read_at(&backing, 4096 + 24, 16), &[0xc6, 0x85, 0x73, 0xf6, 0x4e, 0x1a, 0x45, 0xca, 0x82, 0x65, 0xf5, 0x7f, 0x48, 0xba, 0x6d, 0x81]);

    // Second boot with the same images: the set and the data are still there.
    let second = vm.run(
        r#"
        register /dev/vda /dev/vdb
        dev=$(bcache_of /dev/vdb)
        wait_for /sys/block/vdb/bcache/cache
        emit cset "$(basename "$(readlink /sys/block/vdb/bcache/cache)")"
        emit state "$(cat /sys/block/vdb/bcache/state)"
        dd if="$dev" bs=64k count=4 iflag=direct 2>/dev/null > /tmp/readback
        check readback-after-reboot cmp /tmp/readback /root/pattern.bin
        "#,
    );
    eprintln!("second boot: {:.1} s in QEMU", second.elapsed.as_secs_f64());
    second.assert_value("cset", &cset);
    second.assert_value("state", "clean");
    second.assert_check("readback-after-reboot");
}

/// The harness must be able to fail: a failing command ends the scenario with its
/// status, a failed check is seen, and the failing command shows in the trace.
#[test]
fn failures_are_reported() {
    let out = Vm::new().run_unchecked(
        r#"
        check_eq will-fail a b
        check will-pass true
        emit before yes
        false
        emit after yes
        "#,
    );
    let report = out.report();
    assert_eq!(out.status, Some(1), "{report}");
    assert!(!out.ok(), "{report}");
    assert_eq!(out.value("before"), Some("yes"), "{report}");
    assert_eq!(out.value("after"), None, "{report}");
    let checks = out.checks();
    assert_eq!(checks.len(), 2, "{checks:?}\n{report}");
    assert!(!checks[0].passed && checks[0].name == "will-fail" && checks[0].detail.contains("expected 'a', got 'b'"), "{checks:?}");
    assert!(checks[1].passed, "{checks:?}");
    assert!(out.stderr.contains("+ false"), "{report}");
    assert!(out.stderr.contains("scenario failed with exit status 1"), "{report}");
    assert!(!out.dmesg.is_empty(), "no dmesg from the guest\n{report}");
}

/// A guest that never finishes is killed at the timeout and fails the test.
/// (45 s: a loaded 2-core machine can take 20 s to boot the guest.)
#[test]
fn hung_guest_times_out() {
    let start = Instant::now();
    let result = std::panic::catch_unwind(|| Vm::new().timeout(Duration::from_secs(45)).run("echo started; sleep 600"));
    let elapsed = start.elapsed();
    let err = result.expect_err("a hung guest must fail the test");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("VM timed out after 45 s"), "{msg}");
    assert!(msg.contains("+ sleep 600"), "the report shows the trace: {msg}");
    assert!(elapsed < Duration::from_secs(90), "took {elapsed:?}");
}

/// What a boot that crashed before its scenario left, with this console.
fn crashed_boot(console: &str) -> vm::VmOutput {
    vm::VmOutput {
        console: console.to_string(),
        stdout: String::new(),
        stderr: String::new(),
        dmesg: String::new(),
        status: None,
        qemu_log: String::new(),
        elapsed: Duration::from_secs(9),
        initramfs_build: Duration::ZERO,
        kernel_release: "6.12.117+deb12-amd64".into(),
        run_dir: None,
        scenario_start: None,
    }
}

/// The end of the console of the boot that failed CI at stop 6 (vm_udev_smoke,
/// boot 2, 8.9 s into a systemd boot, bcache not yet loaded).
const STOP6_CONSOLE: &str = "\
[    8.868827]  __d_alloc+0x2b/0x210
[    8.868845]  d_alloc_parallel+0x60/0x450
[    8.869276]  entry_SYSCALL_64_after_hwframe+0x76/0x7e
[    8.869380] Modules linked in: ip_tables(E) x_tables(E) autofs4(E) ext4(E) mbcache(E) crc16(E) jbd2(E) crc32c_generic(E) overlay(E) 9pnet_virtio(E) 9p(E) 9pnet(E) netfs(E) virtio_blk(E)
[    8.869764] ---[ end trace 0000000000000000 ]---
[    8.869823] RIP: 0010:kmem_cache_alloc_lru_noprof+0xca/0x300
[    8.870030] Kernel panic - not syncing: Fatal exception in interrupt
";

/// Regression (CI of stop 6): a guest kernel crash with neither bcache nor dm
/// loaded, before the scenario, is the emulator's or the kernel's, and the boot is
/// made again; any sign that the project's code was running keeps it a failure.
#[test]
fn stop6_crash_before_the_scenario_without_bcache_is_booted_again() {
    let out = crashed_boot(STOP6_CONSOLE);
    let why = out.crash_outside_the_project().expect("the stop 6 crash is outside the project");
    assert!(why.contains("no bcache or dm module loaded") && why.ends_with("Kernel panic - not syncing: Fatal exception in interrupt"), "{why}");

    let int3 = "[    1.92] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n[    1.93] Modules linked in:\n[    1.94] Kernel panic - not syncing: Fatal exception\n";
    let why = crashed_boot(int3).crash_outside_the_project().expect("a crash with no module loaded");
    assert!(why.ends_with("Oops: int3: 0000 [#1] PREEMPT SMP NOPTI"), "the first line of the report is named: {why}");

    for module in ["bcache(E)", "dm_mod(E)", "dm_bufio", "bcache"] {
        let console = STOP6_CONSOLE.replace("virtio_blk(E)", &format!("virtio_blk(E) {module}"));
        assert_eq!(crashed_boot(&console).crash_outside_the_project(), None, "a crash with {module} loaded must fail the test");
    }
    let mut started = crashed_boot(STOP6_CONSOLE);
    started.scenario_start = Some(7.5);
    assert_eq!(started.crash_outside_the_project(), None, "a crash during the scenario must fail the test");
    let mut reported = crashed_boot(STOP6_CONSOLE);
    reported.status = Some(0);
    assert_eq!(reported.crash_outside_the_project(), None, "a scenario that reported its status did not crash before it");
    let mut traced = crashed_boot(STOP6_CONSOLE);
    traced.stderr = "+ bcache make -C /dev/vda\n".into();
    assert_eq!(traced.crash_outside_the_project(), None, "a scenario that wrote its trace had started (its start line may be lost)");
    let warn_only = STOP6_CONSOLE.replace("Kernel panic - not syncing: Fatal exception in interrupt", "WARNING: CPU: 0 PID: 1 at mm/slub.c:1 x");
    assert_eq!(crashed_boot(&warn_only).crash_outside_the_project(), None, "a report that did not end in a panic did not end the boot");
    let no_oops = "[    9.1] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n";
    assert_eq!(crashed_boot(no_oops).crash_outside_the_project(), None, "a panic with no Oops report (init died) must fail the test");
}
