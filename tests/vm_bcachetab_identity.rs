//! Which disk a bcachetab line names, in the real kernel with real disks:
//! the identity recorded at adoption (disk serial, partition, size, file
//! system), checked before every registration; the names adopt accepts
//! for a writeback device; one line per device, however it is named or
//! however many adopts run at once; labels with spaces. Each test is named
//! after the finding it fixes.

mod common;

use std::path::{Path, PathBuf};

use common::vm::{DebianInit, DiskOptions, Scratch, Vm, VmOutput};
use common::{pattern, RES};

const MIB: u64 = 1 << 20;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A Debian guest with udevd (no systemd: nothing here needs units) and
/// the project's rules, as the boot tests install them.
fn udev_guest(system: &Path) -> Vm {
    let mut vm = Vm::debian(system);
    vm.debian_init(DebianInit::Udevd)
        .host_file(&repo("udev/61-bcachetab.rules"), "/usr/lib/udev/rules.d/61-bcachetab.rules")
        .symlink("/usr/sbin/bcachetab-apply", "bcache");
    vm
}

fn serial(s: &str) -> DiskOptions {
    DiskOptions { serial: Some(s.into()), ..DiskOptions::default() }
}

fn files(seed: u64) -> Vec<(String, Vec<u8>)> {
    (0..3).map(|i| (format!("file{i}"), pattern(100_000 + i as usize * 30_011, seed + i))).collect()
}

/// An ext4 image of `size` bytes holding `files(seed)`, labelled when asked.
fn ext4(scratch: &Scratch, name: &str, size: u64, seed: u64, label: Option<&str>) -> PathBuf {
    let img = common::ext4_with_files(scratch, name, size, &files(seed), None);
    if let Some(l) = label {
        let ok = std::process::Command::new("tune2fs").args(["-L", l]).arg(&img).output().unwrap().status.success();
        assert!(ok, "tune2fs -L");
    }
    img
}

/// A disk with an MBR (disk signature `sig`) whose one partition, from
/// 1 MiB, holds `fs`: its PARTUUID is `{sig:08x}-01`.
fn mbr_disk(scratch: &Scratch, name: &str, fs: &Path, sig: u32) -> PathBuf {
    let data = std::fs::read(fs).unwrap();
    let mut img = vec![0u8; MIB as usize];
    img[440..444].copy_from_slice(&sig.to_le_bytes());
    let entry = &mut img[446..462];
    entry[4] = 0x83;
    entry[8..12].copy_from_slice(&2048u32.to_le_bytes());
    entry[12..16].copy_from_slice(&u32::try_from(data.len() / 512).unwrap().to_le_bytes());
    img[510] = 0x55;
    img[511] = 0xaa;
    img.extend_from_slice(&data);
    let path = scratch.path().join(name);
    std::fs::write(&path, img).unwrap();
    path
}

/// Guest shell: `sums DIR` prints each file's name and sha256, sorted.
const SUMS: &str = r#"sums() { (cd "$1" && sha256sum * | sort -k2); }
"#;

/// The checksums of the files a disk was made with and the one written
/// through its bcache device, as `sums` prints them.
fn expected_sums(out: &VmOutput, name: &str) -> String {
    out.section(&format!("sums_{name}"))
}

fn boot_report(what: &str, out: &VmOutput) {
    eprintln!("{what}: {:.1} s in QEMU", out.elapsed.as_secs_f64());
}

/// Finding: a writeback device named by a kernel name (/dev/vdc) is
/// registered at the next boot under its uuid whatever disk has that name
/// then: disks found in another order put one disk's dirty data onto
/// another. Four writeback disks with dirty data in one cache: two named
/// by a by-id link and a PARTUUID= each get their own data when the disks
/// are attached in the other order; two named by path (adopted with
/// --force, after adopt refused the path) are refused, their recorded
/// serials not matching, and never registered; back in the first order
/// every file of all four is intact (checksums), the dirty data included.
#[test]
fn swapped_disks_get_their_own_data_by_stable_name_and_are_refused_by_path() {
    let scratch = Scratch::new();
    let system = scratch.system_disk("system.img");
    let fs_a = ext4(&scratch, "a.img", 32 * MIB, 0xa000, None);
    let fs_b = ext4(&scratch, "b-fs.img", 32 * MIB, 0xb000, None);
    let disk_b = mbr_disk(&scratch, "b.img", &fs_b, 0xb0b0b0b0);
    let fs_c = ext4(&scratch, "c.img", 32 * MIB, 0xc000, None);
    let fs_d = ext4(&scratch, "d.img", 32 * MIB, 0xd000, None);
    let cache = scratch.image("cache.img", 300 * MIB);
    let late = |n: u64| pattern(1 << 20, 0x1a7e + n);
    let disks = [("a", &fs_a), ("b", &disk_b), ("c", &fs_c), ("d", &fs_d)];
    let guest = |order: [usize; 4]| {
        let mut vm = udev_guest(&system);
        for i in order {
            let (name, img) = disks[i];
            vm.disk_with(img, serial(&format!("disk-{name}")));
        }
        vm.disk(&cache);
        for (i, (name, _)) in disks.iter().enumerate() {
            vm.file(&format!("/root/late-{name}"), late(i as u64), false);
        }
        vm
    };
    let mount_and_sum = |names: &[&str]| -> String {
        names
            .iter()
            .map(|n| {
                format!(
                    "wait_for /dev/bcache/{n}\n\
                     mkdir -p /mnt/{n} && check mount_{n} mount /dev/bcache/{n} /mnt/{n}\n\
                     section sums_{n} sums /mnt/{n}\n\
                     umount /mnt/{n}\n"
                )
            })
            .collect()
    };

    // Boot 1: adopt all four in writeback (nothing written back: the late
    // files stay dirty in the cache), write a file through each, lose power.
    let write_late: String = ["a", "b", "c", "d"]
        .iter()
        .map(|n| {
            format!(
                "wait_for /dev/bcache/{n}\n\
                 mkdir -p /mnt/{n} && check mount_{n} mount /dev/bcache/{n} /mnt/{n}\n\
                 check late_{n} cp /root/late-{n} /mnt/{n}/late\n\
                 section sums_{n} sums /mnt/{n}\n\
                 check umount_{n} umount /mnt/{n}\n\
                 emit state_{n} \"$(cat /sys/block/$(basename $(readlink -f /dev/bcache/{n}))/bcache/state)\"\n"
            )
        })
        .collect();
    let wb = "--cache /dev/vde --writeback -o writeback_running=0";
    let out = guest([0, 1, 2, 3]).run(&format!(
        r#"{RES}{SUMS}
        udevadm settle
        check make_cache bcache make -C /dev/vde
        wait_until 30 test -e /sys/block/vde/bcache
        check adopt_a bcache adopt /dev/vda {wb} --name a
        check adopt_b bcache adopt /dev/vdb1 {wb} --name b --spec PARTUUID=b0b0b0b0-01
        emit refused "$(res bcache adopt /dev/vdc {wb} --name c --spec /dev/vdc)"
        check adopt_c bcache adopt /dev/vdc {wb} --name c --spec /dev/vdc --force
        check adopt_d bcache adopt /dev/vdd {wb} --name d --spec /dev/vdd --force
        udevadm settle
        {write_late}
        section tab cat /etc/bcachetab
        section state cat /var/lib/bcache/state
        sync /etc/bcachetab /var/lib/bcache/state
        power_cut
        "#
    ));
    boot_report("boot 1 (adopt, write)", &out);
    out.assert_ok();
    let refused = out.expect_value("refused");
    assert!(
        refused.contains("/dev/vdc may name another disk after a reboot")
            && refused.contains("--force")
            && !refused.ends_with("status=0"),
        "{refused}"
    );
    let tab = out.section("tab");
    assert!(tab.contains("/dev/disk/by-id/virtio-disk-a\t") && tab.contains("PARTUUID=b0b0b0b0-01\t"), "{tab}");
    let state = out.section("state");
    for n in ["a", "b", "c", "d"] {
        assert_eq!(out.expect_value(&format!("state_{n}")), "dirty", "the late file of {n} is only in the cache");
        assert!(state.contains(&format!("disk=serial:disk-{n}")), "{state}");
    }
    assert!(state.contains("partition=1 partuuid=b0b0b0b0-01"), "{state}");
    let sums: Vec<(&str, String)> = ["a", "b", "c", "d"].iter().map(|n| (*n, expected_sums(&out, n))).collect();

    // Boot 2: the disks in the other order (vda is b, vdb a, vdc d, vdd c).
    let out2 = guest([1, 0, 3, 2]).run(&format!(
        r#"{RES}{SUMS}
        udevadm settle
        {}
        emit holders_vdc "$(ls /sys/block/vdc/holders)"
        emit holders_vdd "$(ls /sys/block/vdd/holders)"
        emit bcache_c "$(test -e /dev/bcache/c && echo present || echo absent)"
        emit bcache_d "$(test -e /dev/bcache/d && echo present || echo absent)"
        emit apply_vdc "$(res bcache tab apply /dev/vdc)"
        emit identify_c "$(res bcache tab identify --force c)"
        section list bcache tab list
        emit check "$(res bcache tab check)"
        "#,
        mount_and_sum(&["a", "b"])
    ));
    boot_report("boot 2 (disks swapped)", &out2);
    out2.assert_ok();
    for (n, want) in &sums[..2] {
        assert_eq!(&expected_sums(&out2, n), want, "{n} named by a stable name has other data after the swap");
    }
    for n in ["c", "d"] {
        assert_eq!(out2.expect_value(&format!("bcache_{n}")), "absent", "{n} registered on the other disk");
    }
    assert_eq!(out2.expect_value("holders_vdc"), "", "disk d was registered for line c");
    assert_eq!(out2.expect_value("holders_vdd"), "", "disk c was registered for line d");
    let apply = out2.expect_value("apply_vdc");
    assert!(
        apply.contains("/dev/vdc is not the device adopted for this line: its disk was serial:disk-c when adopted and is serial:disk-d now")
            && apply.contains("bcache tab identify --force c")
            && apply.ends_with("status=1"),
        "{apply}"
    );
    // Told to record the disk now under c's name, identify refuses: it is d's.
    let identify = out2.expect_value("identify_c");
    assert!(identify.contains("/dev/vdc is the device of /etc/bcachetab:5") && identify.ends_with("status=1"), "{identify}");
    let list = out2.section("list");
    assert!(
        list.lines().any(|l| l.split_whitespace().next() == Some("c") && l.contains("down: /dev/vdc is not the device adopted")),
        "{list}"
    );
    let check = out2.expect_value("check");
    assert!(check.contains("identity: /dev/vdd is not the device adopted") && check.ends_with("status=1"), "{check}");

    // Boot 3: the first order again: all four up, every file intact.
    let out3 = guest([0, 1, 2, 3]).run(&format!(
        r#"{RES}{SUMS}
        udevadm settle
        {}
        emit check "$(res bcache tab check)"
        "#,
        mount_and_sum(&["a", "b", "c", "d"])
    ));
    boot_report("boot 3 (first order)", &out3);
    out3.assert_ok();
    for (n, want) in &sums {
        assert_eq!(&expected_sums(&out3, n), want, "{n}'s files changed");
    }
    assert!(out3.expect_value("check").ends_with("status=0"), "{}", out3.expect_value("check"));
}

/// A busybox guest (no udev: what the scenario links by hand is all there is).
fn guest() -> Vm {
    let mut vm = Vm::new();
    vm.module("ext4");
    vm
}

/// Finding: a disk smaller than when it was adopted was registered; a
/// cache may hold its data past the new end. Now it is refused, saying
/// both sizes; grown, it is accepted and its new size recorded.
#[test]
fn shrunk_disk_is_refused_and_a_grown_one_comes_up_with_its_size_recorded() {
    let scratch = Scratch::new();
    let img = ext4(&scratch, "d.img", 64 * MIB, 0x5100, None);
    let save = "section tab cat /etc/bcachetab\nsection state cat /var/lib/bcache/state";
    let mut vm = guest();
    vm.disk(&img);
    let out = vm.run(&format!("{RES}\ncheck adopt bcache adopt /dev/vda --name s --no-start\n{save}\n"));
    out.assert_ok();
    assert!(out.section("state").contains("sectors=131072"), "{}", out.section("state"));
    let carry = |vm: &mut Vm, out: &VmOutput| {
        vm.file("/etc/bcachetab", out.section("tab"), false).file("/var/lib/bcache/state", out.section("state"), false);
    };

    std::fs::OpenOptions::new().write(true).open(&img).unwrap().set_len(48 * MIB).unwrap();
    let mut vm2 = guest();
    vm2.disk(&img);
    carry(&mut vm2, &out);
    let out2 = vm2.run(&format!(
        r#"{RES}
        emit apply "$(res bcache tab apply /dev/vda)"
        emit holders "$(ls /sys/block/vda/holders)"
        section list bcache tab list
        emit identify "$(res bcache tab identify s)"
        emit apply_identified "$(res bcache tab apply /dev/vda)"
        "#
    ));
    out2.assert_ok();
    let apply = out2.expect_value("apply");
    assert!(
        apply.contains("/dev/vda is smaller than when it was adopted (131072 sectors then, 98304 now)")
            && apply.contains("bcache tab identify s")
            && apply.ends_with("status=1"),
        "{apply}"
    );
    assert_eq!(out2.expect_value("holders"), "", "the shrunk disk was registered");
    assert!(out2.section("list").contains("down: /dev/vda is smaller"), "{}", out2.section("list"));
    // Shrunk on purpose: recorded as it is, it comes up.
    let identify = out2.expect_value("identify");
    assert!(identify.contains("recorded sectors=98304") && identify.ends_with("status=0"), "{identify}");
    let up = out2.expect_value("apply_identified");
    assert!(up.contains("/dev/vda: up: /dev/bcache") && up.ends_with("status=0"), "{up}");

    std::fs::OpenOptions::new().write(true).open(&img).unwrap().set_len(80 * MIB).unwrap();
    let mut vm3 = guest();
    vm3.disk(&img);
    carry(&mut vm3, &out);
    let out3 = vm3.run(&format!("{RES}\ncheck apply bcache tab apply /dev/vda\n{save}\n"));
    out3.assert_ok();
    assert!(out3.section("state").contains("sectors=163840"), "{}", out3.section("state"));
}

/// Finding: two `bcache adopt` of one device at once could both pass the
/// check that no line names it before either appended its line: two
/// lines, two uuids for one disk. Now the check and the append hold
/// bcachetab's lock: in each of six pairs started at once (one by the
/// node, one by another spelling of it), one writes the line and the
/// other is told the device is in bcachetab already.
#[test]
fn concurrent_adopts_of_one_device_write_one_line() {
    let scratch = Scratch::new();
    let mut vm = guest();
    let names = ["a", "b", "c", "d", "e", "f"];
    for n in names {
        vm.disk(&scratch.image(&format!("{n}.img"), 16 * MIB));
    }
    let out = vm.run(&format!(
        r#"{RES}
        for n in {}; do
            bcache adopt /dev/vd$n > /tmp/$n.1 2>&1 &
            bcache adopt /dev//vd$n > /tmp/$n.2 2>&1 &
            wait
            section out_$n cat /tmp/$n.1 /tmp/$n.2
        done
        section tab cat /etc/bcachetab
        "#,
        names.join(" ")
    ));
    out.assert_ok();
    let tab = out.section("tab");
    for n in names {
        let lines = tab.lines().filter(|l| l.split_whitespace().nth(1) == Some(&format!("/dev/vd{n}"))).count();
        assert_eq!(lines, 1, "/dev/vd{n} has {lines} lines:\n{tab}");
        let said = out.section(&format!("out_{n}"));
        assert!(
            said.lines().any(|l| l.contains("already in /etc/bcachetab:") && l.contains(&format!(" as /dev/vd{n}: "))),
            "the second adopt of /dev/vd{n} did not say where the device is:\n{said}"
        );
    }
}

/// Finding: `bcache tab check` compared device names as written, so one
/// device named twice (a doubled slash, a by-id link and its node, LABEL=
/// and UUID= of one file system) passed, and both lines registered it
/// under two uuids. Now each pair is reported, and adopt refuses a third
/// line for any of them.
#[test]
fn one_device_named_twice_is_reported_by_tab_check_and_refused_by_adopt() {
    let scratch = Scratch::new();
    let fs = ext4(&scratch, "c.img", 32 * MIB, 0xc100, Some("dup"));
    let fs_uuid = {
        let out = std::process::Command::new("blkid").args(["-p", "-s", "UUID", "-o", "value"]).arg(&fs).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let u = |n: u32| format!("4e4e4e4e-0000-4000-8000-0000000000{n:02}");
    let tab = format!(
        "a  /dev/vda {} -\n\
         a2 /dev//vda {} -\n\
         b  /dev/vdb {} -\n\
         b2 /dev/disk/by-id/virtio-b {} -\n\
         c  LABEL=dup {} -\n\
         c2 UUID={fs_uuid} {} -\n",
        u(1),
        u(2),
        u(3),
        u(4),
        u(5),
        u(6)
    );
    let mut vm = guest();
    vm.disk(&scratch.image("a.img", 16 * MIB)).disk(&scratch.image("b.img", 16 * MIB)).disk(&fs);
    vm.file("/etc/bcachetab", tab, false);
    let out = vm.run(&format!(
        r#"{RES}
        mkdir -p /dev/disk/by-id && ln -s ../../vdb /dev/disk/by-id/virtio-b
        bcache tab check > /tmp/out 2> /tmp/err && emit status 0 || emit status $?
        section err cat /tmp/err
        emit adopt_link "$(res bcache adopt --no-start /dev/disk/by-id/virtio-b)"
        emit adopt_uuid "$(res bcache adopt --no-start /dev/vdc --spec UUID={fs_uuid})"
        emit lines "$(grep -vc '^#' /etc/bcachetab)"
        "#
    ));
    out.assert_ok();
    assert_eq!(out.expect_value("status"), "1");
    let err = out.section("err");
    for want in [
        "/etc/bcachetab:2: device: device already used on line 1",
        "/etc/bcachetab:4: device: /dev/disk/by-id/virtio-b is /dev/vdb, which line 3 names too (as /dev/vdb)",
        &format!("/etc/bcachetab:6: device: UUID={fs_uuid} is /dev/vdc, which line 5 names too (as LABEL=dup)"),
    ] {
        assert!(err.lines().any(|l| l.contains(want)), "no '{want}' in:\n{err}");
    }
    for key in ["adopt_link", "adopt_uuid"] {
        let said = out.expect_value(key);
        assert!(said.contains("already in /etc/bcachetab:") && said.ends_with("status=1"), "{key}: {said}");
    }
    assert_eq!(out.expect_value("lines"), "6", "adopt added a line");
}

/// Finding: a label with a space matched at boot and not on the command
/// line. udev's ID_FS_LABEL is "my_disk" for the label "my disk" (the
/// encoded ID_FS_LABEL_ENC is "my\x20disk"), libblkid reads "my disk":
/// `bcache tab apply /dev/X` found no line, and adopt's duplicate check
/// let a second line with a new uuid through; adopt --spec 'LABEL=my
/// disk' wrote a line with a space, which splits into wrong fields. Now
/// bcachetab writes the label escaped as udev's by-label links do, and both
/// paths compare the label itself.
#[test]
fn a_label_with_a_space_is_matched_by_udev_and_tab_apply_and_refused_twice_by_adopt() {
    let scratch = Scratch::new();
    let system = scratch.system_disk("system.img");
    let mine = ext4(&scratch, "mine.img", 32 * MIB, 0x1ab0, Some("my disk"));
    let other = ext4(&scratch, "other.img", 32 * MIB, 0x1ab1, Some("other disk"));
    let mut vm = udev_guest(&system);
    vm.disk(&mine).disk(&other);
    vm.file("/etc/bcachetab", "m LABEL=my\\x20disk 4e4e4e4e-0000-4000-8000-00000000001a - -\n", false);
    let out = vm.run(&format!(
        r#"{RES}
        udevadm settle
        emit at_boot "$(wait_until 30 test -e /dev/bcache/m && echo up || echo absent)"
        emit label_prop "$(udevadm info -q property -n /dev/vda | grep '^ID_FS_LABEL=')"
        emit apply "$(res bcache tab apply /dev/vda)"
        emit adopt_mine "$(res bcache adopt /dev/vda --no-start)"
        emit spec_elsewhere "$(res bcache adopt /dev/vdb --no-start --spec 'LABEL=my disk')"
        check adopt_other bcache adopt /dev/vdb --no-start --name o --spec 'LABEL=other disk'
        emit adopt_other_again "$(res bcache adopt /dev/vdb --no-start)"
        emit check "$(res bcache tab check)"
        section tab cat /etc/bcachetab
        "#
    ));
    out.assert_ok();
    assert_eq!(out.expect_value("label_prop"), "ID_FS_LABEL=my_disk", "udev's label property");
    assert_eq!(out.expect_value("at_boot"), "up", "udev did not bring the LABEL= line up");
    let apply = out.expect_value("apply");
    assert!(apply.starts_with("/etc/bcachetab:1: /dev/vda: up: /dev/bcache") && apply.ends_with("status=0"), "{apply}");
    let adopt = out.expect_value("adopt_mine");
    assert!(adopt.contains("already in /etc/bcachetab:1 as LABEL=my\\x20disk") && adopt.ends_with("status=1"), "{adopt}");
    let elsewhere = out.expect_value("spec_elsewhere");
    assert!(elsewhere.contains("LABEL=my\\x20disk names /dev/vda, not this device") && elsewhere.ends_with("status=1"), "{elsewhere}");
    let again = out.expect_value("adopt_other_again");
    assert!(again.contains("already in /etc/bcachetab:2 as LABEL=other\\x20disk") && again.ends_with("status=1"), "{again}");
    let tab = out.section("tab");
    assert_eq!(tab.lines().filter(|l| !l.starts_with('#')).count(), 2, "{tab}");
    assert!(tab.lines().any(|l| l.starts_with("o\tLABEL=other\\x20disk\t")), "{tab}");
    assert!(out.expect_value("check").ends_with("status=0"), "{}", out.expect_value("check"));
}
