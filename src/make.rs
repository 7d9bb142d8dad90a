//! Formatting devices for bcache: every check first, on every device, then
//! the writes, so a refused call leaves every device as it was.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::device::{Access, Device, DeviceError};
use crate::superblock::{
    BackingParams, CacheMode, CacheParams, Label, Replacement, Role, Superblock,
    BDEV_DATA_START_DEFAULT, MIN_USABLE_BUCKETS, PAGE_SECTORS,
};
use crate::sysfs::{Registered, SetAction, Sysfs, SysfsError};

/// Default bucket size in sectors (512 KiB), as bcache-tools.
pub const DEFAULT_BUCKET_SECTORS: u64 = 1024;
/// Largest bucket the kernel can address (it shifts a 32-bit int).
pub const MAX_BUCKET_SECTORS: u64 = 1 << 30;

/// Why a format is refused. Nothing has been written when one is returned
/// from [`plan`].
#[derive(Debug, thiserror::Error)]
pub enum MakeError {
    #[error("no devices given: name them after -C (cache) or -B (backing)")]
    NoDevices,
    #[error("only one cache device per call; give the others their own call with --cset-uuid")]
    SeveralCaches,
    #[error("--uuid names one device, but {0} devices were given")]
    UuidForSeveral(usize),
    #[error("{0} is given twice")]
    Duplicate(PathBuf),
    #[error("{what} must not be the nil uuid")]
    NilUuid { what: &'static str },
    #[error("bucket size {0} sectors is not a power of two")]
    BucketNotPowerOfTwo(u64),
    #[error("bucket size {0} sectors is smaller than a page (8 sectors, 4 KiB)")]
    BucketBelowPage(u64),
    #[error("bucket size {0} sectors is too large (at most {MAX_BUCKET_SECTORS})")]
    BucketTooLarge(u64),
    #[error("block size {0} sectors is not a power of two")]
    BlockNotPowerOfTwo(u64),
    #[error("block size {0} sectors is larger than a page (8 sectors, 4 KiB)")]
    BlockAbovePage(u64),
    #[error("block size {block} sectors is larger than the bucket size {bucket} sectors")]
    BlockAboveBucket { block: u64, bucket: u64 },
    #[error("{path}: block size {block} bytes is smaller than the device's logical block size {lbs} bytes")]
    BlockBelowDevice { path: PathBuf, block: u64, lbs: u32 },
    #[error("data offset {0} sectors is below the minimum of {BDEV_DATA_START_DEFAULT}")]
    DataOffsetTooSmall(u64),
    #[error("data offset {offset} sectors is not a multiple of the block size ({block} sectors)")]
    DataOffsetUnaligned { offset: u64, block: u64 },
    #[error("{path}: too small for a backing device with data offset {offset} sectors ({sectors} sectors)")]
    BackingTooSmall { path: PathBuf, offset: u64, sectors: u64 },
    #[error("{path}: data offset {offset} sectors leaves no room for data on its {sectors} sectors; \
             --data-offset counts 512-byte sectors: give at most {max}")]
    DataOffsetPastEnd { path: PathBuf, offset: u64, sectors: u64, max: u64 },
    #[error("{path}: too small for a cache: {nbuckets} buckets of {bucket} sectors, the kernel needs more than {MIN_USABLE_BUCKETS}")]
    CacheTooSmall { path: PathBuf, nbuckets: u64, bucket: u64 },
    #[error("{path}: zoned device: writeback is not supported on zoned backing devices")]
    ZonedWriteback { path: PathBuf },
    #[error("{path}: zoned device: the data offset must be a multiple of the zone size ({zone} sectors)")]
    ZonedUnaligned { path: PathBuf, zone: u64 },
    #[error("{path}: zoned device cannot be a cache")]
    ZonedCache { path: PathBuf },
    #[error("{path}: already a bcache device; overwrite it with --wipe-bcache")]
    AlreadyBcache { path: PathBuf },
    #[error("{path}: contains a {kind} signature; if its data is no longer needed, erase it with: wipefs -a {path}")]
    ForeignSignature { path: PathBuf, kind: String },
    #[error("{path}: registered with bcache; stop it first, or pass --force to stop it and format")]
    Registered { path: PathBuf },
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
}

/// What to make, as the caller asked.
#[derive(Debug, Clone, Default)]
pub struct MakeOptions {
    /// Bucket size in sectors; default [`DEFAULT_BUCKET_SECTORS`].
    pub bucket_sectors: Option<u64>,
    /// Block size in sectors; default the largest logical block size of
    /// the devices.
    pub block_sectors: Option<u64>,
    /// Backing data offset in sectors; default 16 (the zone size on zoned
    /// devices).
    pub data_offset: Option<u64>,
    pub set_uuid: Option<Uuid>,
    /// The device uuid; only with a single device.
    pub uuid: Option<Uuid>,
    pub writeback: bool,
    pub discard: bool,
    pub replacement: Replacement,
    pub label: Label,
    /// Overwrite an existing bcache superblock.
    pub wipe_bcache: bool,
    /// Stop or unregister a device bcache holds before formatting it.
    pub force: bool,
}

/// A device to format and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub path: PathBuf,
    pub role: Role,
}

/// Checked devices and the superblocks to write on them.
#[derive(Debug)]
pub struct Plan {
    pub set_uuid: Uuid,
    pub items: Vec<(Device, Superblock)>,
}

/// Opens every device exclusively and checks everything the kernel or
/// common sense would refuse, without writing.
pub fn plan(targets: &[Target], opts: &MakeOptions, sysfs: &Sysfs) -> Result<Plan, MakeError> {
    if targets.is_empty() {
        return Err(MakeError::NoDevices);
    }
    if targets.iter().filter(|t| t.role == Role::Cache).count() > 1 {
        return Err(MakeError::SeveralCaches);
    }
    if opts.uuid.is_some() && targets.len() > 1 {
        return Err(MakeError::UuidForSeveral(targets.len()));
    }
    if opts.uuid.is_some_and(|u| u.is_nil()) {
        return Err(MakeError::NilUuid { what: "--uuid" });
    }
    if opts.set_uuid.is_some_and(|u| u.is_nil()) {
        return Err(MakeError::NilUuid { what: "--cset-uuid" });
    }
    let bucket = opts.bucket_sectors.unwrap_or(DEFAULT_BUCKET_SECTORS);
    if !bucket.is_power_of_two() {
        return Err(MakeError::BucketNotPowerOfTwo(bucket));
    }
    if bucket < PAGE_SECTORS {
        return Err(MakeError::BucketBelowPage(bucket));
    }
    if bucket > MAX_BUCKET_SECTORS {
        return Err(MakeError::BucketTooLarge(bucket));
    }
    if let Some(b) = opts.block_sectors {
        check_block(b, bucket)?;
    }
    if let Some(off) = opts.data_offset {
        if off < BDEV_DATA_START_DEFAULT {
            return Err(MakeError::DataOffsetTooSmall(off));
        }
    }

    let mut devices = Vec::with_capacity(targets.len());
    for t in targets {
        let dev = open_for_format(&t.path, opts.force, sysfs)?;
        let same = |d: &Device| match (d.rdev(), dev.rdev()) {
            (Some(a), Some(b)) => a == b,
            _ => same_file(d.path(), dev.path()),
        };
        if devices.iter().any(same) {
            return Err(MakeError::Duplicate(t.path.clone()));
        }
        devices.push(dev);
    }

    let max_lbs = devices.iter().map(|d| d.preferred_block_size()).max().unwrap_or(512);
    let block = match opts.block_sectors {
        Some(b) => b,
        None => {
            // A file system may prefer large I/O; a block cannot exceed a page.
            let b = (max_lbs as u64 / 512).clamp(1, PAGE_SECTORS);
            check_block(b, bucket)?;
            b
        }
    };
    for d in &devices {
        if block * 512 < d.logical_block_size() as u64 {
            return Err(MakeError::BlockBelowDevice {
                path: d.path().to_owned(),
                block: block * 512,
                lbs: d.logical_block_size(),
            });
        }
    }

    let set_uuid = opts.set_uuid.unwrap_or_else(Uuid::new_v4);
    let mut items = Vec::with_capacity(devices.len());
    for (t, dev) in targets.iter().zip(devices) {
        let uuid = opts.uuid.unwrap_or_else(Uuid::new_v4);
        let zone = dev.rdev().and_then(|r| sysfs.zone_sectors(r));
        let sb = match t.role {
            Role::Cache => {
                if zone.is_some() {
                    return Err(MakeError::ZonedCache { path: t.path.clone() });
                }
                let nbuckets = dev.sectors() / bucket;
                if nbuckets <= MIN_USABLE_BUCKETS {
                    return Err(MakeError::CacheTooSmall { path: t.path.clone(), nbuckets, bucket });
                }
                Superblock::new_cache(&CacheParams {
                    uuid,
                    set_uuid,
                    label: opts.label.clone(),
                    block_sectors: block as u16,
                    bucket_sectors: bucket,
                    device_sectors: dev.sectors(),
                    discard: opts.discard,
                    replacement: opts.replacement,
                })
            }
            Role::Backing => {
                let offset = backing_offset(&t.path, opts, zone, block)?;
                // At least one block of data past the header. Checked: an
                // offset near u64::MAX would wrap round to a small end and
                // pass, and the kernel would size the device as a negative.
                if offset.checked_add(block).is_none_or(|end| dev.sectors() < end) {
                    let (path, sectors) = (t.path.clone(), dev.sectors());
                    // The largest offset that leaves a block, when there is
                    // one the kernel accepts: what to suggest instead.
                    let max = sectors.checked_sub(block).map(|m| m - m % block);
                    return Err(match max.filter(|&m| opts.data_offset.is_some() && m >= BDEV_DATA_START_DEFAULT) {
                        Some(max) => MakeError::DataOffsetPastEnd { path, offset, sectors, max },
                        None => MakeError::BackingTooSmall { path, offset, sectors },
                    });
                }
                Superblock::new_backing(&BackingParams {
                    uuid,
                    set_uuid: if opts.set_uuid.is_some() || has_cache(targets) {
                        set_uuid
                    } else {
                        Uuid::nil()
                    },
                    label: opts.label.clone(),
                    block_sectors: block as u16,
                    bucket_sectors: bucket,
                    data_offset: offset,
                    cache_mode: if opts.writeback { CacheMode::Writeback } else { CacheMode::Writethrough },
                })
            }
        };
        check_signatures(&dev, opts.wipe_bcache)?;
        items.push((dev, sb));
    }
    Ok(Plan { set_uuid, items })
}

fn has_cache(targets: &[Target]) -> bool {
    targets.iter().any(|t| t.role == Role::Cache)
}

fn check_block(block: u64, bucket: u64) -> Result<(), MakeError> {
    if !block.is_power_of_two() {
        return Err(MakeError::BlockNotPowerOfTwo(block));
    }
    if block > PAGE_SECTORS {
        return Err(MakeError::BlockAbovePage(block));
    }
    if block > bucket {
        return Err(MakeError::BlockAboveBucket { block, bucket });
    }
    Ok(())
}

fn backing_offset(
    path: &Path,
    opts: &MakeOptions,
    zone: Option<u64>,
    block: u64,
) -> Result<u64, MakeError> {
    let offset = opts.data_offset.or(zone).unwrap_or(BDEV_DATA_START_DEFAULT);
    if let Some(zone) = zone {
        if opts.writeback {
            return Err(MakeError::ZonedWriteback { path: path.to_owned() });
        }
        if !offset.is_multiple_of(zone) {
            return Err(MakeError::ZonedUnaligned { path: path.to_owned(), zone });
        }
    }
    if !offset.is_multiple_of(block) {
        return Err(MakeError::DataOffsetUnaligned { offset, block });
    }
    Ok(offset)
}

/// Refuses a device that holds anything but (with `wipe_bcache`) bcache.
fn check_signatures(dev: &Device, wipe_bcache: bool) -> Result<(), MakeError> {
    let path = dev.path().to_owned();
    // Our own look too: libblkid skips a bcache superblock whose checksum
    // is bad, but it is still somebody's bcache device.
    let mut bcache = Superblock::parse(&dev.read_superblock_block()?).is_ok_and(|sb| sb.magic_ok());
    for sig in dev.signatures()? {
        if !sig.is_bcache() {
            return Err(MakeError::ForeignSignature { path, kind: sig.kind });
        }
        bcache = true;
    }
    if bcache && !wipe_bcache {
        return Err(MakeError::AlreadyBcache { path });
    }
    Ok(())
}

/// Opens a device for writing, exclusively. With `force`, a device that
/// bcache holds is stopped (backing) or its set unregistered (cache) first.
fn open_for_format(path: &Path, force: bool, sysfs: &Sysfs) -> Result<Device, MakeError> {
    match Device::open(path, Access::WriteExclusive) {
        Err(DeviceError::Busy { .. }) => {
            let rdev = Device::open(path, Access::Read)?.rdev();
            let held = rdev.and_then(|r| sysfs.registered(r));
            let Some(reg) = held else {
                return Err(DeviceError::Busy { path: path.to_owned() }.into());
            };
            if !force {
                return Err(MakeError::Registered { path: path.to_owned() });
            }
            release(path, reg, sysfs)
        }
        other => Ok(other?),
    }
}

/// Stops what bcache holds (a cache device's whole set is unregistered,
/// its backing devices detached) and opens the device once the kernel has
/// let go of it.
fn release(path: &Path, reg: Registered, sysfs: &Sysfs) -> Result<Device, MakeError> {
    sysfs.release(path, &reg, SetAction::Unregister)?;
    Ok(Device::open(path, Access::WriteExclusive)?)
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

impl Plan {
    /// Writes every superblock. Devices were checked by [`plan`]; an I/O
    /// error here stops at the failing device.
    pub fn write(&self) -> Result<(), MakeError> {
        for (dev, sb) in &self.items {
            dev.write_superblock(sb)?;
        }
        Ok(())
    }
}
