//! bcache: the on-disk format of Linux's bcache, the devices that carry it
//! and the kernel's sysfs interface to it.
//!
//! The `bcache` binary is a thin layer over this library.

pub mod adopt;
pub mod apply;
pub mod bcachetab;
pub mod device;
pub mod fault;
pub mod header;
pub mod identity;
pub mod make;
pub mod raw;
pub mod show;
pub mod state;
pub mod superblock;
pub mod units;
pub mod sysfs;

/// The system's text for an I/O error ("No such file or directory"),
/// without Rust's "(os error N)" suffix: what C tools print.
pub fn os_error_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_owned(),
        None => e.to_string(),
    }
}
