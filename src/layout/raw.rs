//! Registering a backing device that holds no superblock, through the
//! `register_raw` interface of the patched bcache module (kernel/): one line
//! of text from which the kernel builds the superblock itself.
//!
//! The rules here are the kernel's, checked first so that a refusal names
//! its reason even where the kernel log cannot be read.

use std::fmt;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::device::Device;
use crate::layout::{Backing, LayoutError};
use crate::sysfs::Sysfs;
use crate::superblock::{BdevState, Superblock, LABEL_LEN, PAGE_SECTORS};

/// The uuid bcache writes into the uuid-table slots it invalidates: a
/// device registered under it would find one of them.
pub const INVALIDATED_SLOT_UUID: Uuid = Uuid::from_u128(0xa03ef8ed_3ee1_b878_c850_fc5ecb16cd99);

/// Why a raw registration is refused before the kernel sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RawError {
    #[error("the backing device uuid must not be the nil uuid")]
    NilUuid,
    #[error("the cache set uuid must not be the nil uuid (leave it out for none)")]
    NilSetUuid,
    #[error("uuid {0} is the one bcache marks invalidated cache slots with; choose another")]
    ReservedUuid(Uuid),
    #[error("state {0} needs a cache set uuid")]
    StateNeedsSet(&'static str),
    #[error("block size {size} bytes must be a power of two from the device's logical block size ({lbs}) to 4096")]
    BadBlockSize { size: u32, lbs: u32 },
    #[error("data offset {offset} is not below the device size ({sectors} sectors)")]
    OffsetBeyondDevice { offset: u64, sectors: u64 },
    #[error("data offset {offset} sectors is not a multiple of the block size ({block} bytes)")]
    OffsetUnaligned { offset: u64, block: u32 },
    #[error("data offset {0} sectors is too large: over 2^64 bytes")]
    OffsetTooLarge(u64),
    #[error("size must be a number of sectors above 0")]
    ZeroSize,
    #[error("size {size} sectors is not above the data offset ({offset} sectors)")]
    SizeNotAboveOffset { size: u64, offset: u64 },
    #[error("the device has {sectors} sectors, fewer than the {size} recorded: a device must not shrink under its cache")]
    DeviceShrank { sectors: u64, size: u64 },
    #[error("label is {0} bytes long; at most 32 fit")]
    LabelTooLong(usize),
    #[error("label must not contain whitespace or control characters")]
    LabelCharacters,
    #[error("{0}: the device holds a bcache superblock of its own: use register")]
    HasSuperblock(String),
}

impl Backing {
    /// Checks the registration against the device as the kernel will.
    ///
    /// Two of the kernel's refusals need what only it knows, the uuid
    /// tables of the registered cache sets: state none while the named
    /// set holds data for the uuid, and the uuid of a flash-only volume.
    /// Those come back from the kernel, with its reason.
    pub fn validate(&self, dev: &Device) -> Result<(), RawError> {
        self.validate_geometry(dev.logical_block_size(), dev.sectors())?;
        // What the kernel's read_super accepts is a superblock of its own.
        let own = |sb: Superblock| match sb.validate(&dev.geometry()) {
            Ok(_) => true,
            Err(r) => !r.is_read_super(),
        };
        if dev.read_superblock().is_ok_and(own) {
            return Err(RawError::HasSuperblock(dev.path().display().to_string()));
        }
        Ok(())
    }

    /// The checks that need no more of the device than its logical block
    /// size (bytes) and its size (sectors), in the kernel's order.
    pub fn validate_geometry(&self, lbs: u32, sectors: u64) -> Result<(), RawError> {
        if self.uuid.is_nil() {
            return Err(RawError::NilUuid);
        }
        if self.set_uuid.is_some_and(|s| s.is_nil()) {
            return Err(RawError::NilSetUuid);
        }
        if self.set_uuid.is_none() && matches!(self.state, BdevState::Clean | BdevState::Dirty) {
            return Err(RawError::StateNeedsSet(self.state.name()));
        }
        if self.uuid == INVALIDATED_SLOT_UUID {
            return Err(RawError::ReservedUuid(self.uuid));
        }
        match self.size {
            Some(0) => return Err(RawError::ZeroSize),
            Some(size) if size <= self.data_offset => {
                return Err(RawError::SizeNotAboveOffset { size, offset: self.data_offset })
            }
            _ => {}
        }
        let block = self.block_size.unwrap_or(lbs);
        if !block.is_power_of_two() || block < lbs || block as u64 > PAGE_SECTORS * 512 {
            return Err(RawError::BadBlockSize { size: block, lbs });
        }
        if let Some(size) = self.size.filter(|&size| sectors < size) {
            return Err(RawError::DeviceShrank { sectors, size });
        }
        if self.data_offset >= sectors {
            return Err(RawError::OffsetBeyondDevice { offset: self.data_offset, sectors });
        }
        // A data offset of 2^55 sectors or more does not fit in bytes.
        let bytes = self.data_offset.checked_mul(512).ok_or(RawError::OffsetTooLarge(self.data_offset))?;
        if bytes % block as u64 != 0 {
            return Err(RawError::OffsetUnaligned { offset: self.data_offset, block });
        }
        if self.label.len() > LABEL_LEN {
            return Err(RawError::LabelTooLong(self.label.len()));
        }
        if self.label.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(RawError::LabelCharacters);
        }
        Ok(())
    }

    /// The line for /sys/fs/bcache/register_raw, naming `path`.
    pub fn line(&self, path: &str) -> String {
        RawLine { path, raw: self }.to_string()
    }
}

/// [`Layout::register`](crate::layout::Layout::register) for register_raw:
/// checked as the kernel checks it, then one line.
pub fn register(sysfs: &Sysfs, _run_dir: &Path, b: &Backing, dev: Device, path: &Path) -> Result<PathBuf, LayoutError> {
    b.validate(&dev)?;
    let shown = path.to_string_lossy();
    sysfs.register_raw(&shown, &b.line(&shown))?;
    Ok(path.to_owned())
}

struct RawLine<'a> {
    path: &'a str,
    raw: &'a Backing,
}

impl fmt::Display for RawLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.raw;
        write!(f, "{} {} ", self.path, r.uuid.hyphenated())?;
        match r.set_uuid {
            Some(s) => write!(f, "{}", s.hyphenated())?,
            None => f.write_str("none")?,
        }
        write!(f, " data_offset={}", r.data_offset)?;
        if let Some(b) = r.block_size {
            write!(f, " block_size={b}")?;
        }
        write!(f, " cache_mode={} state={}", r.cache_mode.name(), r.state.name())?;
        if !r.label.is_empty() {
            write!(f, " label={}", r.label)?;
        }
        if let Some(size) = r.size {
            write!(f, " size={size}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::superblock::CacheMode;

    #[test]
    fn the_line_names_every_field() {
        let r = Backing {
            uuid: Uuid::from_u128(1),
            set_uuid: None,
            data_offset: 0,
            block_size: Some(4096),
            cache_mode: CacheMode::Writeback,
            state: BdevState::None,
            label: "disk7".into(),
            size: None,
        };
        assert_eq!(
            r.line("/dev/sdb"),
            "/dev/sdb 00000000-0000-0000-0000-000000000001 none data_offset=0 block_size=4096 \
             cache_mode=writeback state=none label=disk7"
        );
        let sized = Backing { size: Some(1 << 21), ..r };
        assert!(sized.line("/dev/sdb").ends_with(" label=disk7 size=2097152"), "{}", sized.line("/dev/sdb"));
    }

    fn plain() -> Backing {
        Backing {
            uuid: Uuid::from_u128(7),
            set_uuid: None,
            data_offset: 0,
            block_size: None,
            cache_mode: CacheMode::Writethrough,
            state: BdevState::None,
            label: String::new(),
            size: None,
        }
    }

    /// Regression: `data_offset * 512` overflowed (a panic in a debug build,
    /// a wrong answer in a release build) for an offset of 2^55 sectors or
    /// more on a device that large.
    #[test]
    fn a_huge_data_offset_is_refused_not_overflowed() {
        for offset in [1 << 55, (1 << 60) + 8, u64::MAX - 1] {
            let r = Backing { data_offset: offset, ..plain() };
            assert_eq!(r.validate_geometry(512, u64::MAX), Err(RawError::OffsetTooLarge(offset)));
        }
        // Just below: fits, and is checked for alignment as before.
        let r = Backing { data_offset: (1 << 55) - 1, ..plain() };
        assert!(matches!(r.validate_geometry(4096, u64::MAX), Err(RawError::OffsetUnaligned { .. })));
        let r = Backing { data_offset: (1 << 55) - 8, ..plain() };
        assert_eq!(r.validate_geometry(4096, u64::MAX), Ok(()));
    }

    #[test]
    fn a_device_may_grow_but_not_shrink_below_its_recorded_size() {
        let r = Backing { size: Some(1000), data_offset: 16, ..plain() };
        assert_eq!(r.validate_geometry(512, 999), Err(RawError::DeviceShrank { sectors: 999, size: 1000 }));
        assert_eq!(r.validate_geometry(512, 1000), Ok(()));
        assert_eq!(r.validate_geometry(512, 1 << 40), Ok(()));
        assert_eq!(Backing { size: Some(0), ..plain() }.validate_geometry(512, 1000), Err(RawError::ZeroSize));
        assert_eq!(
            Backing { size: Some(16), data_offset: 16, ..plain() }.validate_geometry(512, 1000),
            Err(RawError::SizeNotAboveOffset { size: 16, offset: 16 })
        );
        // Not given: the device's size is not checked.
        assert_eq!(plain().validate_geometry(512, 1), Ok(()));
    }

    #[test]
    fn the_uuid_of_invalidated_slots_is_refused() {
        assert_eq!(INVALIDATED_SLOT_UUID.hyphenated().to_string(), "a03ef8ed-3ee1-b878-c850-fc5ecb16cd99");
        let r = Backing { uuid: INVALIDATED_SLOT_UUID, ..plain() };
        assert_eq!(r.validate_geometry(512, 1000), Err(RawError::ReservedUuid(INVALIDATED_SLOT_UUID)));
    }
}
