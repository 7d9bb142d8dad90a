//! The bcache on-disk superblock (`struct cache_sb_disk`): a typed model that
//! parses, validates, builds and serialises it.
//!
//! Parsing never fails on content: a superblock that the kernel would refuse
//! still parses, so that `super-show` can display it. [`Superblock::validate`]
//! then applies the kernel's `read_super` checks in the kernel's order, with
//! the kernel's reasons, so a refusal reads the same here and in dmesg.

use std::fmt;

use crc::{Crc, CRC_64_WE};
use serde::Serialize;
use uuid::Uuid;

/// Sector (of 512 bytes) at which the superblock lives.
pub const SB_SECTOR: u64 = 8;
/// Byte offset of the superblock on the device.
pub const SB_START: u64 = SB_SECTOR * 512;
/// Bytes written for a superblock: the kernel and bcache-tools write a whole
/// 4 KiB block, zero padded.
pub const SB_BLOCK_LEN: usize = 4096;
/// Bytes of `struct cache_sb_disk` up to the journal table's end: all a
/// reader needs (bcache-tools reads and writes no more). The one field past
/// it, `obso_bucket_size_hi`, reads as zero when absent.
pub const SB_LEN: usize = 2256;
/// Bytes a reader needs: one block at [`SB_START`].
pub const SB_READ_LEN: usize = SB_BLOCK_LEN;
/// The bcache magic, at byte 24 of the superblock.
pub const MAGIC: [u8; 16] = [
    0xc6, 0x85, 0x73, 0xf6, 0x4e, 0x1a, 0x45, 0xca, 0x82, 0x65, 0xf5, 0x7f, 0x48, 0xba, 0x6d, 0x81,
];
/// Size of the label field; a label of this length has no terminating NUL.
pub const LABEL_LEN: usize = 32;
/// Journal bucket slots in the superblock (`SB_JOURNAL_BUCKETS`).
pub const JOURNAL_BUCKETS: usize = 256;
/// Data offset of a backing device without an explicit one, in sectors.
pub const BDEV_DATA_START_DEFAULT: u64 = 16;
/// Most caches a set may have (`MAX_CACHES_PER_SET`).
pub const MAX_CACHES_PER_SET: u16 = 8;
/// Fewest buckets `read_super` accepts on a cache device.
pub const MIN_BUCKETS: u64 = 1 << 7;
/// A cache needs more buckets than this or its allocator refuses it after
/// `read_super` succeeded (the free fifo would be empty).
pub const MIN_USABLE_BUCKETS: u64 = 512;
/// The kernel's page size in sectors on the architectures bcache users run.
pub const PAGE_SECTORS: u64 = 4096 / 512;

/// Incompatible feature: bucket size = bucket_size + obso_bucket_size_hi << 16.
pub const FEATURE_INCOMPAT_OBSO_LARGE_BUCKET: u64 = 0x1;
/// Incompatible feature: bucket_size holds log2 of the bucket size.
pub const FEATURE_INCOMPAT_LOG_LARGE_BUCKET_SIZE: u64 = 0x2;
/// Incompatible features the kernel understands.
pub const FEATURE_INCOMPAT_SUPPORTED: u64 =
    FEATURE_INCOMPAT_OBSO_LARGE_BUCKET | FEATURE_INCOMPAT_LOG_LARGE_BUCKET_SIZE;

const CRC: Crc<u64> = Crc::<u64>::new(&CRC_64_WE);

/// Superblock versions (`BCACHE_SB_VERSION_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Version {
    Cdev = 0,
    Bdev = 1,
    CdevWithUuid = 3,
    BdevWithOffset = 4,
    CdevWithFeatures = 5,
    BdevWithFeatures = 6,
}

impl Version {
    pub fn from_raw(v: u64) -> Option<Version> {
        Some(match v {
            0 => Version::Cdev,
            1 => Version::Bdev,
            3 => Version::CdevWithUuid,
            4 => Version::BdevWithOffset,
            5 => Version::CdevWithFeatures,
            6 => Version::BdevWithFeatures,
            _ => return None,
        })
    }

    pub fn is_backing(self) -> bool {
        matches!(self, Version::Bdev | Version::BdevWithOffset | Version::BdevWithFeatures)
    }
}

/// What a device is, by its superblock version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Cache,
    Backing,
}

/// Cache mode of a backing device (`BDEV_CACHE_MODE`, flags bits 0-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    #[default]
    Writethrough = 0,
    Writeback = 1,
    Writearound = 2,
    None = 3,
}

impl CacheMode {
    pub const ALL: [CacheMode; 4] =
        [CacheMode::Writethrough, CacheMode::Writeback, CacheMode::Writearound, CacheMode::None];

    pub fn from_raw(v: u64) -> Option<CacheMode> {
        CacheMode::ALL.get(v as usize).copied()
    }

    /// The name the kernel's sysfs uses.
    pub fn name(self) -> &'static str {
        match self {
            CacheMode::Writethrough => "writethrough",
            CacheMode::Writeback => "writeback",
            CacheMode::Writearound => "writearound",
            CacheMode::None => "none",
        }
    }
}

impl std::str::FromStr for CacheMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        CacheMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown cache mode '{s}' (writethrough, writeback, writearound, none)"))
    }
}

/// State of a backing device (`BDEV_STATE`, flags bits 61-62).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BdevState {
    #[default]
    None = 0,
    Clean = 1,
    Dirty = 2,
    Stale = 3,
}

impl BdevState {
    pub const ALL: [BdevState; 4] =
        [BdevState::None, BdevState::Clean, BdevState::Dirty, BdevState::Stale];

    pub fn name(self) -> &'static str {
        match self {
            BdevState::None => "none",
            BdevState::Clean => "clean",
            BdevState::Dirty => "dirty",
            BdevState::Stale => "stale",
        }
    }
}

/// Replacement policy of a cache device (`CACHE_REPLACEMENT`, flags bits 2-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Replacement {
    #[default]
    Lru = 0,
    Fifo = 1,
    Random = 2,
}

impl Replacement {
    pub const ALL: [Replacement; 3] = [Replacement::Lru, Replacement::Fifo, Replacement::Random];

    pub fn from_raw(v: u64) -> Option<Replacement> {
        Replacement::ALL.get(v as usize).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            Replacement::Lru => "lru",
            Replacement::Fifo => "fifo",
            Replacement::Random => "random",
        }
    }
}

impl std::str::FromStr for Replacement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Replacement::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown cache replacement policy '{s}' (lru, fifo, random)"))
    }
}

/// A bitfield of the 64-bit `flags` word.
struct Bits {
    shift: u32,
    width: u32,
}

impl Bits {
    const fn mask(&self) -> u64 {
        ((1u64 << self.width) - 1) << self.shift
    }
    fn get(&self, flags: u64) -> u64 {
        (flags & self.mask()) >> self.shift
    }
    fn set(&self, flags: &mut u64, v: u64) {
        *flags = (*flags & !self.mask()) | ((v << self.shift) & self.mask());
    }
}

const CACHE_SYNC: Bits = Bits { shift: 0, width: 1 };
const CACHE_DISCARD: Bits = Bits { shift: 1, width: 1 };
const CACHE_REPLACEMENT: Bits = Bits { shift: 2, width: 3 };
const BDEV_CACHE_MODE: Bits = Bits { shift: 0, width: 4 };
const BDEV_STATE: Bits = Bits { shift: 61, width: 2 };

/// `struct cache_sb_disk`, field for field, in host byte order.
///
/// Fields hold what is on disk, valid or not; accessors interpret them the
/// way the kernel does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub csum: u64,
    /// Sector of the superblock itself; must be [`SB_SECTOR`].
    pub offset: u64,
    pub version: u64,
    pub magic: [u8; 16],
    pub uuid: Uuid,
    pub set_uuid: Uuid,
    pub label: [u8; LABEL_LEN],
    pub flags: u64,
    pub seq: u64,
    pub feature_compat: u64,
    pub feature_incompat: u64,
    pub feature_ro_compat: u64,
    pub pad: [u64; 5],
    /// Byte 184 is a union: `nbuckets` on a cache device, `data_offset`
    /// (sectors) on a backing device. Use [`Superblock::nbuckets`] or
    /// [`Superblock::data_offset`].
    pub nbuckets_or_data_offset: u64,
    pub block_size: u16,
    /// Raw field; see [`Superblock::bucket_sectors`] for the bucket size.
    pub bucket_size: u16,
    pub nr_in_set: u16,
    pub nr_this_dev: u16,
    pub last_mount: u32,
    pub first_bucket: u16,
    /// Number of journal buckets listed in `d`.
    pub keys: u16,
    pub d: [u64; JOURNAL_BUCKETS],
    pub obso_bucket_size_hi: u16,
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
fn arr16(b: &[u8], at: usize) -> [u8; 16] {
    b[at..at + 16].try_into().expect("16 bytes")
}

/// Why a superblock is refused. The `Display` text is the kernel's own
/// message for the same refusal, so it can be compared with dmesg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("Not a bcache superblock (bad offset)")]
    BadOffset,
    #[error("Not a bcache superblock (bad magic)")]
    BadMagic,
    #[error("Bad checksum")]
    BadChecksum,
    #[error("Bad UUID")]
    BadUuid,
    #[error("Superblock block size smaller than device block size")]
    BlockSizeBelowDevice,
    #[error("Bad data offset")]
    BadDataOffset,
    #[error("Unsupported superblock version")]
    UnsupportedVersion,
    #[error("Unsupported compatible feature found")]
    UnsupportedCompatFeature,
    #[error("Unsupported read-only compatible feature found")]
    UnsupportedRoCompatFeature,
    #[error("Unsupported incompatible feature found")]
    UnsupportedIncompatFeature,
    #[error("Too many journal buckets")]
    TooManyJournalBuckets,
    #[error("Too many buckets")]
    TooManyBuckets,
    #[error("Not enough buckets")]
    NotEnoughBuckets,
    #[error("Bad block size (not power of 2)")]
    BlockSizeNotPowerOfTwo,
    #[error("Bad block size (larger than page size)")]
    BlockSizeAbovePage,
    #[error("Bad bucket size (not power of 2)")]
    BucketSizeNotPowerOfTwo,
    #[error("Bad bucket size (smaller than page size)")]
    BucketSizeBelowPage,
    #[error("Invalid superblock: device too small")]
    DeviceTooSmall,
    #[error("Bad UUID")]
    BadSetUuid,
    #[error("Bad cache device number in set")]
    BadCacheNumber,
    #[error("Journal buckets not sequential")]
    JournalNotSequential,
    #[error("Invalid superblock: first bucket comes before end of super")]
    FirstBucketInSuper,
    /// Not a `read_super` check: the kernel accepts the superblock and then
    /// fails to allocate the cache.
    #[error("cache device is too small: {0} buckets, more than 512 needed")]
    TooFewUsableBuckets(u64),
}

impl Rejection {
    /// True when the kernel's `read_super` refuses with this reason (and
    /// its message is this one's `Display`).
    pub fn is_read_super(&self) -> bool {
        !matches!(self, Rejection::TooFewUsableBuckets(_))
    }
}

/// What the validator needs to know of the device holding the superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceGeometry {
    /// Logical block size in bytes.
    pub logical_block_size: u32,
    /// Whole-device capacity in 512-byte sectors.
    pub sectors: u64,
}

impl Superblock {
    /// Parses the 4 KiB block read at [`SB_START`]. Only a short buffer is an
    /// error; every content problem is left to [`Superblock::validate`].
    pub fn parse(block: &[u8]) -> Result<Superblock, ShortRead> {
        if block.len() < SB_LEN {
            return Err(ShortRead { len: block.len() });
        }
        let b = block;
        let mut d = [0u64; JOURNAL_BUCKETS];
        for (i, slot) in d.iter_mut().enumerate() {
            *slot = le64(b, 208 + 8 * i);
        }
        let mut pad = [0u64; 5];
        for (i, slot) in pad.iter_mut().enumerate() {
            *slot = le64(b, 144 + 8 * i);
        }
        Ok(Superblock {
            csum: le64(b, 0),
            offset: le64(b, 8),
            version: le64(b, 16),
            magic: arr16(b, 24),
            uuid: Uuid::from_bytes(arr16(b, 40)),
            set_uuid: Uuid::from_bytes(arr16(b, 56)),
            label: b[72..104].try_into().expect("32 bytes"),
            flags: le64(b, 104),
            seq: le64(b, 112),
            feature_compat: le64(b, 120),
            feature_incompat: le64(b, 128),
            feature_ro_compat: le64(b, 136),
            pad,
            nbuckets_or_data_offset: le64(b, 184),
            block_size: le16(b, 192),
            bucket_size: le16(b, 194),
            nr_in_set: le16(b, 196),
            nr_this_dev: le16(b, 198),
            last_mount: le32(b, 200),
            first_bucket: le16(b, 204),
            keys: le16(b, 206),
            d,
            obso_bucket_size_hi: if b.len() >= 2258 { le16(b, 2256) } else { 0 },
        })
    }

    /// The little-endian image, zero padded to 4 KiB, with `csum` as stored
    /// (call [`Superblock::seal`] first to make it right).
    pub fn to_bytes(&self) -> [u8; SB_BLOCK_LEN] {
        let mut b = [0u8; SB_BLOCK_LEN];
        let mut put = |at: usize, bytes: &[u8]| b[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &self.csum.to_le_bytes());
        put(8, &self.offset.to_le_bytes());
        put(16, &self.version.to_le_bytes());
        put(24, &self.magic);
        put(40, self.uuid.as_bytes());
        put(56, self.set_uuid.as_bytes());
        put(72, &self.label);
        put(104, &self.flags.to_le_bytes());
        put(112, &self.seq.to_le_bytes());
        put(120, &self.feature_compat.to_le_bytes());
        put(128, &self.feature_incompat.to_le_bytes());
        put(136, &self.feature_ro_compat.to_le_bytes());
        for (i, p) in self.pad.iter().enumerate() {
            put(144 + 8 * i, &p.to_le_bytes());
        }
        put(184, &self.nbuckets_or_data_offset.to_le_bytes());
        put(192, &self.block_size.to_le_bytes());
        put(194, &self.bucket_size.to_le_bytes());
        put(196, &self.nr_in_set.to_le_bytes());
        put(198, &self.nr_this_dev.to_le_bytes());
        put(200, &self.last_mount.to_le_bytes());
        put(204, &self.first_bucket.to_le_bytes());
        put(206, &self.keys.to_le_bytes());
        for (i, j) in self.d.iter().enumerate() {
            put(208 + 8 * i, &j.to_le_bytes());
        }
        put(2256, &self.obso_bucket_size_hi.to_le_bytes());
        b
    }

    /// The checksum the kernel expects, or `None` when `keys` is out of
    /// range: the kernel would checksum past the journal table (it does not
    /// bound `keys` first), so no honest checksum exists.
    pub fn expected_csum(&self) -> Option<u64> {
        if self.keys as usize > JOURNAL_BUCKETS {
            return None;
        }
        let b = self.to_bytes();
        Some(CRC.checksum(&b[8..208 + 8 * self.keys as usize]))
    }

    /// Stores the right checksum.
    ///
    /// # Panics
    /// When `keys` exceeds [`JOURNAL_BUCKETS`]: builders never produce that.
    pub fn seal(&mut self) {
        self.csum = self.expected_csum().expect("keys within the journal table");
    }

    pub fn version(&self) -> Option<Version> {
        Version::from_raw(self.version)
    }

    /// Backing or cache, by version; `None` for an unknown version.
    pub fn role(&self) -> Option<Role> {
        self.version().map(|v| if v.is_backing() { Role::Backing } else { Role::Cache })
    }

    pub fn magic_ok(&self) -> bool {
        self.magic == MAGIC
    }

    /// The label up to its first NUL (all 32 bytes when there is none).
    pub fn label_bytes(&self) -> &[u8] {
        let end = self.label.iter().position(|&c| c == 0).unwrap_or(LABEL_LEN);
        &self.label[..end]
    }

    /// Where data starts on a backing device, in sectors, as the kernel
    /// reads it: version 1 always starts at 16.
    pub fn data_offset(&self) -> u64 {
        if self.version == Version::Bdev as u64 {
            BDEV_DATA_START_DEFAULT
        } else {
            self.nbuckets_or_data_offset
        }
    }

    /// Buckets on a cache device.
    pub fn nbuckets(&self) -> u64 {
        self.nbuckets_or_data_offset
    }

    /// Bucket size in sectors, as the kernel computes it (feature aware).
    pub fn bucket_sectors(&self) -> u64 {
        if self.version >= Version::CdevWithFeatures as u64 {
            if self.feature_incompat & FEATURE_INCOMPAT_LOG_LARGE_BUCKET_SIZE != 0 {
                // The kernel shifts a 32-bit value; larger orders overflow.
                return 1u64 << (self.bucket_size as u32).min(31);
            }
            if self.feature_incompat & FEATURE_INCOMPAT_OBSO_LARGE_BUCKET != 0 {
                return self.bucket_size as u64 + ((self.obso_bucket_size_hi as u64) << 16);
            }
        }
        self.bucket_size as u64
    }

    pub fn cache_mode_raw(&self) -> u64 {
        BDEV_CACHE_MODE.get(self.flags)
    }
    pub fn cache_mode(&self) -> Option<CacheMode> {
        CacheMode::from_raw(self.cache_mode_raw())
    }
    pub fn set_cache_mode(&mut self, m: CacheMode) {
        BDEV_CACHE_MODE.set(&mut self.flags, m as u64);
    }
    pub fn state(&self) -> BdevState {
        BdevState::ALL[BDEV_STATE.get(self.flags) as usize]
    }
    pub fn set_state(&mut self, s: BdevState) {
        BDEV_STATE.set(&mut self.flags, s as u64);
    }
    pub fn cache_sync(&self) -> bool {
        CACHE_SYNC.get(self.flags) != 0
    }
    pub fn discard(&self) -> bool {
        CACHE_DISCARD.get(self.flags) != 0
    }
    pub fn set_discard(&mut self, on: bool) {
        CACHE_DISCARD.set(&mut self.flags, on as u64);
    }
    pub fn replacement_raw(&self) -> u64 {
        CACHE_REPLACEMENT.get(self.flags)
    }
    pub fn replacement(&self) -> Option<Replacement> {
        Replacement::from_raw(self.replacement_raw())
    }
    pub fn set_replacement(&mut self, r: Replacement) {
        CACHE_REPLACEMENT.set(&mut self.flags, r as u64);
    }

    /// Checks the superblock as the kernel's `read_super` does, in the same
    /// order, then what the kernel checks later (a cache must have more than
    /// 512 buckets). Returns the device's role when it would register.
    pub fn validate(&self, dev: &DeviceGeometry) -> Result<Role, Rejection> {
        if self.offset != SB_SECTOR {
            return Err(Rejection::BadOffset);
        }
        if !self.magic_ok() {
            return Err(Rejection::BadMagic);
        }
        // Checked before the checksum, which the kernel computes over
        // `keys` journal slots without bounding it.
        let expected = self.expected_csum().ok_or(Rejection::TooManyJournalBuckets)?;
        if self.csum != expected {
            return Err(Rejection::BadChecksum);
        }
        if self.uuid.is_nil() {
            return Err(Rejection::BadUuid);
        }
        if (self.block_size as u64) * 512 < dev.logical_block_size as u64 {
            return Err(Rejection::BlockSizeBelowDevice);
        }
        match self.version().ok_or(Rejection::UnsupportedVersion)? {
            Version::Bdev => Ok(Role::Backing),
            Version::BdevWithOffset | Version::BdevWithFeatures => {
                if self.nbuckets_or_data_offset < BDEV_DATA_START_DEFAULT {
                    return Err(Rejection::BadDataOffset);
                }
                Ok(Role::Backing)
            }
            Version::Cdev | Version::CdevWithUuid => self.validate_cache(dev),
            Version::CdevWithFeatures => {
                if self.feature_compat != 0 {
                    return Err(Rejection::UnsupportedCompatFeature);
                }
                if self.feature_ro_compat != 0 {
                    return Err(Rejection::UnsupportedRoCompatFeature);
                }
                if self.feature_incompat & !FEATURE_INCOMPAT_SUPPORTED != 0 {
                    return Err(Rejection::UnsupportedIncompatFeature);
                }
                self.validate_cache(dev)
            }
        }
    }

    fn validate_cache(&self, dev: &DeviceGeometry) -> Result<Role, Rejection> {
        let bucket = self.bucket_sectors();
        let block = self.block_size as u64;
        let nbuckets = self.nbuckets();
        // keys <= JOURNAL_BUCKETS was established before the checksum.
        if nbuckets > i64::MAX as u64 {
            return Err(Rejection::TooManyBuckets);
        }
        if nbuckets < MIN_BUCKETS {
            return Err(Rejection::NotEnoughBuckets);
        }
        if !block.is_power_of_two() {
            return Err(Rejection::BlockSizeNotPowerOfTwo);
        }
        if block > PAGE_SECTORS {
            return Err(Rejection::BlockSizeAbovePage);
        }
        if !bucket.is_power_of_two() {
            return Err(Rejection::BucketSizeNotPowerOfTwo);
        }
        if bucket < PAGE_SECTORS {
            return Err(Rejection::BucketSizeBelowPage);
        }
        // The kernel multiplies in 64 bits; an overflow cannot fit any disk.
        if bucket.checked_mul(nbuckets).is_none_or(|need| dev.sectors < need) {
            return Err(Rejection::DeviceTooSmall);
        }
        if self.set_uuid.is_nil() {
            return Err(Rejection::BadSetUuid);
        }
        if self.nr_in_set == 0
            || self.nr_in_set <= self.nr_this_dev
            || self.nr_in_set > MAX_CACHES_PER_SET
        {
            return Err(Rejection::BadCacheNumber);
        }
        let first = self.first_bucket as u64;
        if (0..self.keys as u64).any(|i| self.d[i as usize] != first + i) {
            return Err(Rejection::JournalNotSequential);
        }
        if first + self.keys as u64 > nbuckets {
            return Err(Rejection::TooManyJournalBuckets);
        }
        if first * bucket < SB_SECTOR * 2 {
            return Err(Rejection::FirstBucketInSuper);
        }
        if nbuckets <= MIN_USABLE_BUCKETS {
            return Err(Rejection::TooFewUsableBuckets(nbuckets));
        }
        Ok(Role::Cache)
    }
}

/// The buffer holds less than a superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("short read: {len} bytes, a superblock needs {SB_LEN}")]
pub struct ShortRead {
    pub len: usize,
}

/// A label that fits: at most 31 bytes (bcache-tools' limit, which keeps a
/// terminating NUL), no NUL inside.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Label([u8; LABEL_LEN]);

/// Why a label is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("label is {0} bytes long; at most {max} fit", max = LABEL_LEN - 1)]
    TooLong(usize),
    #[error("label contains a NUL byte")]
    Nul,
}

impl Label {
    pub fn new(text: &str) -> Result<Label, LabelError> {
        let b = text.as_bytes();
        if b.len() >= LABEL_LEN {
            return Err(LabelError::TooLong(b.len()));
        }
        if b.contains(&0) {
            return Err(LabelError::Nul);
        }
        let mut out = [0u8; LABEL_LEN];
        out[..b.len()].copy_from_slice(b);
        Ok(Label(out))
    }
}

/// Settings of a new cache device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheParams {
    pub uuid: Uuid,
    pub set_uuid: Uuid,
    pub label: Label,
    pub block_sectors: u16,
    /// Bucket size in sectors, a power of two.
    pub bucket_sectors: u64,
    pub device_sectors: u64,
    pub discard: bool,
    pub replacement: Replacement,
}

/// Settings of a new backing device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingParams {
    pub uuid: Uuid,
    pub set_uuid: Uuid,
    pub label: Label,
    pub block_sectors: u16,
    pub bucket_sectors: u64,
    /// Sectors before the data; at least 16.
    pub data_offset: u64,
    pub cache_mode: CacheMode,
}

impl Superblock {
    fn blank(uuid: Uuid, set_uuid: Uuid, label: &Label, block_sectors: u16) -> Superblock {
        Superblock {
            csum: 0,
            offset: SB_SECTOR,
            version: 0,
            magic: MAGIC,
            uuid,
            set_uuid,
            label: label.0,
            flags: 0,
            seq: 0,
            feature_compat: 0,
            feature_incompat: 0,
            feature_ro_compat: 0,
            pad: [0; 5],
            nbuckets_or_data_offset: 0,
            block_size: block_sectors,
            bucket_size: 0,
            nr_in_set: 0,
            nr_this_dev: 0,
            last_mount: 0,
            first_bucket: 0,
            keys: 0,
            d: [0; JOURNAL_BUCKETS],
            obso_bucket_size_hi: 0,
        }
    }

    /// A sealed cache superblock as bcache-tools writes it: no journal yet,
    /// one device in its set, the first bucket past the superblock.
    pub fn new_cache(p: &CacheParams) -> Superblock {
        let mut sb = Superblock::blank(p.uuid, p.set_uuid, &p.label, p.block_sectors);
        // Version 0, as bcache-tools writes; a bucket beyond 16 bits is
        // stored as its log2 under a feature, which needs version 5.
        match u16::try_from(p.bucket_sectors) {
            Ok(b) => {
                sb.version = Version::Cdev as u64;
                sb.bucket_size = b;
            }
            Err(_) => {
                sb.version = Version::CdevWithFeatures as u64;
                sb.bucket_size = p.bucket_sectors.trailing_zeros() as u16;
                sb.feature_incompat = FEATURE_INCOMPAT_LOG_LARGE_BUCKET_SIZE;
            }
        }
        sb.nbuckets_or_data_offset = p.device_sectors / p.bucket_sectors;
        sb.nr_in_set = 1;
        sb.nr_this_dev = 0;
        // bcache-tools' rule, kept so that our images equal theirs: the
        // first bucket starts past sector 23.
        sb.first_bucket = (23 / p.bucket_sectors + 1) as u16;
        sb.set_discard(p.discard);
        sb.set_replacement(p.replacement);
        sb.seal();
        sb
    }

    /// A sealed backing superblock: version 1 when the data starts at the
    /// default offset, version 4 otherwise. The kernel ignores a backing
    /// device's bucket size; it is recorded when it fits 16 bits, as
    /// bcache-tools does, and left zero otherwise.
    pub fn new_backing(p: &BackingParams) -> Superblock {
        let mut sb = Superblock::blank(p.uuid, p.set_uuid, &p.label, p.block_sectors);
        sb.bucket_size = u16::try_from(p.bucket_sectors).unwrap_or(0);
        if p.data_offset == BDEV_DATA_START_DEFAULT {
            sb.version = Version::Bdev as u64;
        } else {
            sb.version = Version::BdevWithOffset as u64;
            sb.nbuckets_or_data_offset = p.data_offset;
        }
        sb.set_cache_mode(p.cache_mode);
        sb.seal();
        sb
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", *self as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_check_value_is_crc64_we() {
        assert_eq!(CRC.checksum(b"123456789"), 0x62EC_59E3_F1A4_F00A);
    }
}
