//! 24 adopted devices on one cache, booted again and again: the boot test
//! (tests/vm_bcachetab_boot.rs) checks every boot, the benchmark
//! (bench/boot.rs) times the two layouts side by side.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::vm::{disk_dev, DebianInit, Scratch, Vm, VmOutput};

pub const MANY: usize = 24;
const MIB: u64 = 1 << 20;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A Debian guest with the project's rules and unit installed as the README
/// says, and the patched module when asked.
pub fn guest(system: &Path, patched: bool) -> Vm {
    let mut vm = Vm::debian(system);
    vm.host_file(&repo("udev/61-bcachetab.rules"), "/usr/lib/udev/rules.d/61-bcachetab.rules")
        .host_file(&repo("systemd/bcachetab-wait@.service"), "/usr/lib/systemd/system/bcachetab-wait@.service")
        .symlink("/usr/sbin/bcachetab-apply", "bcache");
    if patched {
        let ko = super::patched_module(&vm);
        vm.module_override(&ko);
    }
    vm
}

/// One system disk, 24 ext4 disks (half adopted writeback, half
/// writethrough) and a cache, for one layout: raw with the patched module,
/// header on the stock kernel.
pub struct ManyDevices {
    _scratch: Scratch,
    system: PathBuf,
    disks: Vec<PathBuf>,
    cache: PathBuf,
    pub patched: bool,
}

/// What a boot after the first showed.
pub struct Boot {
    pub out: VmOutput,
    /// From the last of the 24 disks initialised by udev to the last bcache
    /// device initialised.
    pub settle_ms: u64,
}

impl ManyDevices {
    pub fn new(patched: bool) -> ManyDevices {
        let scratch = Scratch::new();
        let system = scratch.system_disk("system.img");
        let disks = (0..MANY)
            .map(|i| {
                let img = scratch.image(&format!("d{i:02}.img"), 8 * MIB);
                let uuid = format!("00000000-0000-4000-8000-0000000000{i:02}");
                let ok = Command::new("mkfs.ext4").args(["-q", "-F", "-U", &uuid]).arg(&img).status().unwrap();
                assert!(ok.success(), "mkfs.ext4");
                img
            })
            .collect();
        let cache = scratch.image("cache.img", 400 * MIB);
        ManyDevices { _scratch: scratch, system, disks, cache, patched }
    }

    /// udevd without systemd: nothing here needs units, and each boot is
    /// about 11 s shorter under TCG.
    fn vm(&self) -> Vm {
        let mut vm = guest(&self.system, self.patched);
        vm.debian_init(DebianInit::Udevd);
        for d in &self.disks {
            vm.disk(d);
        }
        // 24 registrations per boot are minutes of TCG on a busy machine.
        vm.disk(&self.cache).memory_mib(1024).timeout(Duration::from_secs(900));
        vm
    }

    /// The first boot: the cache made, the 24 adopted. Asserts all came up.
    pub fn adopt(&self) -> VmOutput {
        // The guest's device names: vda..vdx, then the cache.
        let cache_dev = disk_dev(MANY);
        let mut adopt = String::new();
        for i in 0..MANY {
            let wb = if i % 2 == 0 { "--writeback" } else { "" };
            adopt.push_str(&format!("check adopt_{i:02} bcache adopt {} --cache {cache_dev} {wb} --name d{i:02}\n", disk_dev(i)));
        }
        let out = self.vm().run(&format!(
            r#"
            check make_cache bcache make -C {cache_dev}
            wait_until 30 test -e /sys/block/{c}/bcache
            {adopt}
            udevadm settle
            emit up "$(ls /dev/bcache/ | grep -c '^d[0-9]' || true)"
            "#,
            c = cache_dev.trim_start_matches("/dev/")
        ));
        out.assert_ok();
        assert_eq!(out.expect_value("up"), MANY.to_string());
        out
    }

    /// A boot after the first: waits for all 24 to come up and asserts
    /// what every boot must show.
    pub fn boot(&self, n: u32) -> Boot {
        let raw_disks = (0..MANY).map(|i| disk_dev(i).trim_start_matches("/dev/").to_owned()).collect::<Vec<_>>().join(" ");
        let out = self.vm().run(&format!(
            r#"
            udevadm settle --timeout=600
            wait_until 600 sh -c '[ "$(ls /dev/bcache/ | grep -c "^d[0-9]")" = {MANY} ]'
            udevadm settle --timeout=600
            emit up "$(ls /dev/bcache/ | grep -c '^d[0-9]' || true)"
            emit bcache_disks "$(ls /sys/block | grep -c '^bcache' || true)"
            emit registered "$(dmesg | grep -c 'registered backing device' || true)"
            emit refused "$(dmesg | grep -c 'register_bcache() error\|register_raw:' || true)"
            emit headers "$(ls /sys/block | grep -c '^dm-' || true)"
            emit listed_up "$(bcache tab list | grep -c ' up: ' || true)"
            # Last raw disk initialised by udev, last bcache device initialised.
            last() {{ for d in "$@"; do udevadm info -q property -n /dev/$d | sed -n 's/^USEC_INITIALIZED=//p'; done | sort -n | tail -1; }}
            RAW=$(last {raw_disks})
            BC=$(last $(ls /sys/block | grep '^bcache'))
            emit settle_ms $(( (BC - RAW) / 1000 ))
            "#
        ));
        out.assert_ok();
        let many = MANY.to_string();
        assert_eq!(out.expect_value("up"), many, "boot {n}: /dev/bcache/ links");
        assert_eq!(out.expect_value("bcache_disks"), many, "boot {n}: bcache devices");
        assert_eq!(out.expect_value("registered"), many, "boot {n}: each device registered once");
        assert_eq!(out.expect_value("refused"), "0", "boot {n}: no registration refused");
        assert_eq!(out.expect_value("listed_up"), many, "boot {n}: bcache tab list");
        let headers = if self.patched { "0" } else { many.as_str() };
        assert_eq!(out.expect_value("headers"), headers, "boot {n}: one dm device per header");
        let settle_ms = out.expect_value("settle_ms").parse().expect("settle_ms is a number");
        Boot { out, settle_ms }
    }
}
