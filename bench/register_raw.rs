//! 4 KiB random reads and writes (fio) through /dev/bcacheN on three stacks
//! over the same backing disk, in the QEMU guest with the register_raw
//! module: an on-disk superblock, register_raw, and the dm-linear header
//! stack that stock kernels need. Reports IOPS and ratios to the on-disk
//! case; a benchmark, not a test (nothing here fails on a figure).
//!
//!   cargo bench --bench register_raw
//!
//! Needs what the VM tests need, the module from kernel/build.sh, and fio
//! and dmsetup on the host (copied into the guest).

#[path = "../tests/common/mod.rs"]
mod common;

use common::vm::{Scratch, Vm};

const ROUNDS: usize = 3;

fn main() {
    let scratch = Scratch::new();
    let backing = scratch.image("backing.img", 1 << 30);
    let mut vm = Vm::new();
    let ko = common::patched_module(&vm);
    vm.host_file(&ko, "/lib/modules/bcache.ko")
        .host_binary("fio")
        .host_binary("dmsetup")
        .disk(&backing)
        .memory_mib(2048)
        .timeout(std::time::Duration::from_secs(1800));
    if let Ok(secs) = std::env::var("FIO_SECONDS") {
        vm.env("FIO_SECONDS", &secs);
    }
    let script = format!(
        r#"
        U=4b4b4b4b-1111-4222-8333-444444444444
        fio_iops() {{ # DEV RW
            fio --name=b --filename="$1" --rw="$2" --bs=4k --direct=1 --ioengine=psync \
                --size=512m --runtime=${{FIO_SECONDS:-8}} --time_based --output-format=terse --terse-version=3 \
              | awk -F';' -v rw="$2" '{{ print (rw == "randread") ? $8 : $49 }}'
        }}
        measure() {{ # NAME DEV
            emit "$1.randread" "$(fio_iops "$2" randread)"
            emit "$1.randwrite" "$(fio_iops "$2" randwrite)"
        }}
        ondisk() {{
            # The previous stack lets go of the disk a moment after it stops.
            wait_until 30 bcache make -B --wipe-bcache /dev/vda
            bcache register /dev/vda
            B=$(bcache_of /dev/vda); measure ondisk "$B"
            bcache stop /dev/vda; wait_gone /sys/block/vda/bcache
        }}
        raw() {{
            dd if=/dev/zero of=/dev/vda bs=4k count=2 conv=fsync 2>/dev/null
            wait_until 30 bcache register --raw /dev/vda --uuid $U
            B=$(bcache_of /dev/vda); measure raw "$B"
            bcache stop /dev/vda; wait_gone /sys/block/vda/bcache
        }}
        dmlinear() {{
            dd if=/dev/zero of=/dev/vda bs=4k count=2 conv=fsync 2>/dev/null
            # The header: the first 16 sectors of a small bcache-formatted file.
            dd if=/dev/zero of=/tmp/header bs=64k count=16 2>/dev/null
            bcache make -B /tmp/header >/dev/null
            L=$(losetup -f); losetup "$L" /tmp/header
            S=$(blockdev --getsz /dev/vda)
            printf '0 16 linear %s 0\n16 %s linear /dev/vda 0\n' "$L" "$S" | dmsetup create --noudevsync bench-hdr
            # No udev in the guest: devtmpfs has the dm-N node.
            H=/dev/dm-$(dmsetup info -c --noheadings -o minor bench-hdr | tr -d ' ')
            wait_for "$H"
            bcache register "$H"
            B=$(bcache_of "$H"); measure dmlinear "$B"
            bcache stop "$H"; wait_gone /sys/block/${{H##*/}}/bcache
            wait_until 30 dmsetup remove bench-hdr
            losetup -d "$L"
        }}
        for round in $(seq {ROUNDS}); do ondisk; raw; dmlinear; done
        "#
    );
    let out = vm.run(&script);
    let mean = |key: &str| {
        let v: Vec<f64> = out.values(key).iter().map(|s| s.trim().parse().expect("fio IOPS")).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    println!("| stack | 4k randread IOPS | ratio | 4k randwrite IOPS | ratio |");
    println!("|---|---|---|---|---|");
    let (r0, w0) = (mean("ondisk.randread"), mean("ondisk.randwrite"));
    for (name, label) in [("ondisk", "on-disk superblock"), ("raw", "register_raw"), ("dmlinear", "dm-linear header")] {
        let (r, w) = (mean(&format!("{name}.randread")), mean(&format!("{name}.randwrite")));
        println!("| {label} | {r:.0} | {:.3} | {w:.0} | {:.3} |", r / r0, w / w0);
    }
    println!("\n(mean of {ROUNDS} rounds, fio psync direct 4 KiB, guest kernel {}, QEMU TCG, 1 GiB virtio disk)", out.kernel_release);
}
