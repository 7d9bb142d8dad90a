//! Registering a backing device that holds no superblock, through the
//! `register_raw` interface of the patched bcache module (kernel/): one line
//! of text from which the kernel builds the superblock itself.
//!
//! The rules here are the kernel's, checked first so that a refusal names
//! its reason even where the kernel log cannot be read.

use std::fmt;

use uuid::Uuid;

use crate::device::Device;
use crate::superblock::{BdevState, CacheMode, Superblock, LABEL_LEN, PAGE_SECTORS};

/// Everything register_raw takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawBacking {
    pub uuid: Uuid,
    /// The cache set, or none for a device not attached.
    pub set_uuid: Option<Uuid>,
    /// Sectors before the data; 0 means the whole device is data.
    pub data_offset: u64,
    /// Bytes; the device's logical block size when not given.
    pub block_size: Option<u32>,
    pub cache_mode: CacheMode,
    pub state: BdevState,
    pub label: String,
}

/// Why a raw registration is refused before the kernel sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RawError {
    #[error("the backing device uuid must not be the nil uuid")]
    NilUuid,
    #[error("the cache set uuid must not be the nil uuid (leave it out for none)")]
    NilSetUuid,
    #[error("state {0} needs a cache set uuid")]
    StateNeedsSet(&'static str),
    #[error("block size {size} bytes must be a power of two from the device's logical block size ({lbs}) to 4096")]
    BadBlockSize { size: u32, lbs: u32 },
    #[error("data offset {offset} is not below the device size ({sectors} sectors)")]
    OffsetBeyondDevice { offset: u64, sectors: u64 },
    #[error("data offset {offset} sectors is not a multiple of the block size ({block} bytes)")]
    OffsetUnaligned { offset: u64, block: u32 },
    #[error("label is {0} bytes long; at most 32 fit")]
    LabelTooLong(usize),
    #[error("label must not contain whitespace or control characters")]
    LabelCharacters,
    #[error("{0}: the device holds a bcache superblock of its own: use register")]
    HasSuperblock(String),
}

impl RawBacking {
    /// Checks the registration against the device as the kernel will.
    pub fn validate(&self, dev: &Device) -> Result<(), RawError> {
        if self.uuid.is_nil() {
            return Err(RawError::NilUuid);
        }
        if self.set_uuid.is_some_and(|s| s.is_nil()) {
            return Err(RawError::NilSetUuid);
        }
        if self.set_uuid.is_none() && matches!(self.state, BdevState::Clean | BdevState::Dirty) {
            return Err(RawError::StateNeedsSet(self.state.name()));
        }
        let lbs = dev.logical_block_size();
        let block = self.block_size.unwrap_or(lbs);
        if !block.is_power_of_two() || block < lbs || block as u64 > PAGE_SECTORS * 512 {
            return Err(RawError::BadBlockSize { size: block, lbs });
        }
        if self.data_offset >= dev.sectors() {
            return Err(RawError::OffsetBeyondDevice { offset: self.data_offset, sectors: dev.sectors() });
        }
        if (self.data_offset * 512) % block as u64 != 0 {
            return Err(RawError::OffsetUnaligned { offset: self.data_offset, block });
        }
        if self.label.len() > LABEL_LEN {
            return Err(RawError::LabelTooLong(self.label.len()));
        }
        if self.label.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(RawError::LabelCharacters);
        }
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

    /// The line for /sys/fs/bcache/register_raw, naming `path`.
    pub fn line(&self, path: &str) -> String {
        RawLine { path, raw: self }.to_string()
    }
}

struct RawLine<'a> {
    path: &'a str,
    raw: &'a RawBacking,
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_every_field() {
        let r = RawBacking {
            uuid: Uuid::from_u128(1),
            set_uuid: None,
            data_offset: 0,
            block_size: Some(4096),
            cache_mode: CacheMode::Writeback,
            state: BdevState::None,
            label: "disk7".into(),
        };
        assert_eq!(
            r.line("/dev/sdb"),
            "/dev/sdb 00000000-0000-0000-0000-000000000001 none data_offset=0 block_size=4096 \
             cache_mode=writeback state=none label=disk7"
        );
    }
}
