//! bcache: the on-disk format of Linux's bcache, the devices that carry it
//! and the kernel's sysfs interface to it.
//!
//! The `bcache` binary is a thin layer over this library.

pub mod device;
pub mod make;
pub mod show;
pub mod superblock;
pub mod units;
pub mod sysfs;
