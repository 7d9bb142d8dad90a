//! bcache: the on-disk format of Linux's bcache, the devices that carry it
//! and the kernel's sysfs interface to it.
//!
//! The data path: the `bcache` binary (a thin layer, `src/cli`) →
//! [`tab`] (bcachetab devices: file, records, rules, activation) and
//! [`make`] / [`show`] (formatted devices) → [`layout`] (raw or header) and
//! [`superblock`] / [`device`] → [`sysfs`] (the kernel).

pub mod device;
pub mod fault;
pub mod files;
pub mod layout;
pub mod make;
pub mod show;
pub mod superblock;
pub mod sysfs;
pub mod tab;
pub mod units;

/// The system's text for an I/O error ("No such file or directory"),
/// without Rust's "(os error N)" suffix: what C tools print.
pub fn os_error_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_owned(),
        None => e.to_string(),
    }
}
