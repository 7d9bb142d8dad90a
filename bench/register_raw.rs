//! 4 KiB random reads and writes (fio) through /dev/bcacheN on three stacks
//! over the same backing disk, in the QEMU guest with the register_raw
//! module: an on-disk superblock, register_raw, and the dm-linear header
//! stack that stock kernels need. Reports IOPS and ratios to the on-disk
//! case; a benchmark, not a test (nothing here fails on a figure).
//!
//!   cargo bench --bench register_raw      (ROUNDS=12, FIO_SECONDS=8 by default)
//!
//! Under TCG one measurement varies by about ±8 % with the host's load, more
//! than the stacks differ. So each round measures the three stacks back to
//! back, in an order that rotates from round to round (no stack always
//! first), and the ratio to the on-disk stack is taken within the round;
//! the report gives the median of those paired ratios and their spread.
//!
//! Needs what the VM tests need, the module from kernel/build.sh, and fio
//! and dmsetup on the host (copied into the guest).

#[path = "../tests/common/mod.rs"]
mod common;

use common::vm::{Scratch, Vm};

fn main() {
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
    let scratch = Scratch::new();
    let backing = scratch.image("backing.img", 1 << 30);
    let mut vm = Vm::new();
    let ko = common::patched_module(&vm);
    vm.host_file(&ko, "/lib/modules/bcache.ko")
        .host_binary("fio")
        .host_binary("dmsetup")
        .disk(&backing)
        .memory_mib(2048)
        .timeout(std::time::Duration::from_secs(600 + 120 * rounds as u64));
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
        for round in $(seq {rounds}); do
            case $((round % 3)) in
            1) ondisk; raw; dmlinear ;;
            2) raw; dmlinear; ondisk ;;
            0) dmlinear; ondisk; raw ;;
            esac
        done
        "#
    );
    let out = vm.run(&script);
    let series = |key: &str| -> Vec<f64> { out.values(key).iter().map(|s| s.trim().parse().expect("fio IOPS")).collect() };
    println!("| stack | 4k randread IOPS (median) | ratio: median of rounds [min, max] | 4k randwrite IOPS (median) | ratio: median of rounds [min, max] |");
    println!("|---|---:|---|---:|---|");
    for (name, label) in [("ondisk", "on-disk superblock"), ("raw", "register_raw"), ("dmlinear", "dm-linear header")] {
        let mut cells = Vec::new();
        for rw in ["randread", "randwrite"] {
            let base = series(&format!("ondisk.{rw}"));
            let this = series(&format!("{name}.{rw}"));
            let ratios: Vec<f64> = this.iter().zip(&base).map(|(a, b)| a / b).collect();
            let (lo, hi) = ratios.iter().fold((f64::MAX, f64::MIN), |(l, h), &r| (l.min(r), h.max(r)));
            cells.push(format!("{:.0} | {:.3} [{lo:.3}, {hi:.3}]", median(this), median(ratios)));
        }
        println!("| {label} | {} | {} |", cells[0], cells[1]);
    }
    println!(
        "\n({rounds} rounds, stacks in rotating order, ratios paired within each round; fio psync direct 4 KiB, {} s per pattern; guest kernel {}, QEMU TCG, 1 GiB virtio disk)",
        std::env::var("FIO_SECONDS").unwrap_or_else(|_| "8".into()),
        out.kernel_release
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}
