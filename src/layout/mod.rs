//! The two ways a backing device without a superblock of its own is shown
//! to bcache, behind one registration: [`Backing`] says what the kernel is
//! told, and each layout's `register` (same signature) tells it.
//!
//! - [`raw`]: the patched module's register_raw builds the superblock from
//!   one line of text; the device's data starts at its first sector.
//! - [`header`]: stock kernels: an 8 KiB header holding a superblock,
//!   joined in front of the device by a dm-linear table, and that device
//!   registered.

pub mod header;
pub mod raw;

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::device::Device;
use crate::superblock::{BdevState, CacheMode};
use crate::sysfs::{Sysfs, SysfsError};

/// How the device's data is presented to bcache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// register_raw (patched module): the kernel builds the superblock from
    /// text; the device's data starts at its first sector.
    Raw,
    /// Stock kernels: an 8 KiB header holding a superblock, joined in front
    /// of the device by a dm-linear table; that device is registered.
    Header,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Raw => "raw",
            Layout::Header => "header",
        }
    }

    pub fn parse(s: &str) -> Option<Layout> {
        match s {
            "raw" => Some(Layout::Raw),
            "header" => Some(Layout::Header),
            _ => None,
        }
    }

    /// Tells the kernel about `dev` (found at `path`) as `b` says; returns
    /// the device bcache registered: `dev` itself, or the header's dm
    /// device.
    pub fn register(self, sysfs: &Sysfs, run_dir: &Path, b: &Backing, dev: Device, path: &Path) -> Result<PathBuf, LayoutError> {
        match self {
            Layout::Raw => raw::register(sysfs, run_dir, b, dev, path),
            Layout::Header => header::register(sysfs, run_dir, b, dev, path),
        }
    }
}

/// Everything the kernel is told about a backing device, whichever the
/// layout: the superblock's fields register_raw takes as text, or the
/// header holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backing {
    pub uuid: Uuid,
    /// The cache set, or none for a device not attached.
    pub set_uuid: Option<Uuid>,
    /// Sectors before the data: 0 (the whole device is data) or more for
    /// raw, the header's size for a header.
    pub data_offset: u64,
    /// Bytes; the device's logical block size when not given.
    pub block_size: Option<u32>,
    pub cache_mode: CacheMode,
    pub state: BdevState,
    pub label: String,
    /// The device's size in sectors as recorded when it was adopted: the
    /// kernel refuses the device if it is smaller now (its cache keys the
    /// data by sector). None: not checked. Raw only (a header's dm table
    /// is built from the device as it is).
    pub size: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(transparent)]
    Raw(#[from] raw::RawError),
    #[error(transparent)]
    Header(#[from] header::HeaderError),
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
}
