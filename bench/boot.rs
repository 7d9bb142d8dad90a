//! 24 adopted devices at boot, raw layout (patched module) against header
//! layout (stock kernel), side by side (issue 8 item 8). A benchmark, not a
//! test: it prints figures and judges nothing.
//!
//!   cargo bench --bench boot
//!
//! Each layout has its own guest disks (tests/common/many.rs: 24 ext4
//! disks, half adopted writeback, one cache, udevd without systemd). After
//! the first boot of each (the adopt), ROUNDS rounds each boot both once,
//! the order alternating from round to round, so that the host's load
//! falls on both alike. The figure of a boot is the time from the last of
//! the 24 disks initialised by udev to the last bcache device initialised
//! (USEC_INITIALIZED). Printed: every boot, the medians, the ratio of the
//! medians (raw/header) and the median of the rounds' paired ratios.
//!
//! Environment: ROUNDS (default 5).

#[path = "../tests/common/mod.rs"]
mod common;

use common::many::ManyDevices;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let rounds: u32 = std::env::var("ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let load = || std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    let load_before = load();
    let raw = ManyDevices::new(true);
    let header = ManyDevices::new(false);
    raw.adopt();
    header.adopt();
    let (mut r, mut h, mut paired) = (Vec::new(), Vec::new(), Vec::new());
    println!("| round | raw (ms) | header (ms) | raw/header |");
    println!("|---:|---:|---:|---:|");
    for round in 1..=rounds {
        let n = round + 1;
        let (a, b) = if round % 2 == 1 { (&raw, &header) } else { (&header, &raw) };
        let first = a.boot(n).settle_ms as f64;
        let second = b.boot(n).settle_ms as f64;
        let (rm, hm) = if a.patched { (first, second) } else { (second, first) };
        println!("| {round} | {rm:.0} | {hm:.0} | {:.3} |", rm / hm);
        r.push(rm);
        h.push(hm);
        paired.push(rm / hm);
    }
    let (mr, mh) = (median(&mut r), median(&mut h));
    println!();
    println!("medians: raw {mr:.0} ms, header {mh:.0} ms; ratio of the medians raw/header {:.3}; median of the paired ratios {:.3}", mr / mh, median(&mut paired));
    println!("load average (1, 5, 15 min): {load_before} before, {} after", load());
}
