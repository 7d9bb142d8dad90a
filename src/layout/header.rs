//! The stock-kernel layout of a bcachetab device: an 8 KiB header holding
//! a backing superblock (data offset 16), on a loop device over a file in
//! /run, joined in front of the real device by a dm-linear table. The
//! dm device is what bcache registers; its data sector 16 is the device's
//! sector 0, so the device's content is untouched.
//!
//! The header is rebuilt at every boot from bcachetab and the state file:
//! what the kernel writes into it (attach, dirty, stale) is read back into
//! the state file by [`read_back`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use devicemapper::{DevId, DmName, DmOptions, DmUuid, DM};
use uuid::Uuid;

use crate::device::{Device, DeviceError};
use crate::layout::{Backing, LayoutError};
use crate::os_error_text;
use crate::sysfs::Sysfs;
use crate::superblock::{BackingParams, Label, Superblock, BDEV_DATA_START_DEFAULT, SB_START};

/// Sectors of header before the device's data.
pub const HEADER_SECTORS: u64 = BDEV_DATA_START_DEFAULT;

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("{}: {}", .0.display(), os_error_text(.1))]
    Io(PathBuf, io::Error),
    #[error("loop device for {}: {}", .0.display(), os_error_text(.1))]
    Loop(PathBuf, io::Error),
    #[error("device-mapper {name}: {msg}")]
    Dm { name: String, msg: String },
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("label: {0}")]
    Label(String),
    #[error("block size {0} bytes does not fit a superblock (at most 65535 sectors); give block= a power of two from 512 to 4096")]
    BlockSize(u32),
}

/// [`Layout::register`](crate::layout::Layout::register) for a header:
/// set up (or its superblock rewritten), then its dm device registered.
pub fn register(sysfs: &Sysfs, run_dir: &Path, b: &Backing, dev: Device, _path: &Path) -> Result<PathBuf, LayoutError> {
    let joined = set_up(run_dir, &dev, b)?;
    drop(dev);
    sysfs.register(&joined.to_string_lossy(), false)?;
    Ok(joined)
}

/// The header's file under `run_dir`.
pub fn header_file(run_dir: &Path, uuid: &Uuid) -> PathBuf {
    run_dir.join("header").join(uuid.hyphenated().to_string())
}

fn dm_name(uuid: &Uuid) -> String {
    format!("bcachetab-{}", uuid.hyphenated())
}

fn dm_uuid(uuid: &Uuid) -> String {
    format!("BCACHETAB-{}", uuid.hyphenated())
}

fn dm_err(name: &str) -> impl Fn(devicemapper::DmError) -> HeaderError + '_ {
    move |e| HeaderError::Dm { name: name.to_owned(), msg: e.to_string() }
}

/// The dm device of a header already set up: its /dev path and device
/// number.
pub fn find(uuid: &Uuid) -> Option<(PathBuf, u64)> {
    let dm = DM::new().ok()?;
    let name = dm_name(uuid);
    let info = dm.device_info(&DevId::Name(DmName::new(&name).ok()?)).ok()?;
    let d = info.device();
    Some((PathBuf::from(format!("/dev/dm-{}", d.minor)), nix::sys::stat::makedev(d.major.into(), d.minor.into())))
}

/// Builds the header and the dm device in front of `dev`; returns the dm
/// device's path, to be registered.
/// A dm device left from an earlier registration at this boot (the bcache
/// device stopped) gets the new superblock in place, written through the
/// dm device itself so that its page cache holds what the kernel reads.
pub fn set_up(run_dir: &Path, dev: &Device, p: &Backing) -> Result<PathBuf, HeaderError> {
    let block_size = p.block_size.unwrap_or(dev.logical_block_size());
    if let Some((joined, _)) = find(&p.uuid) {
        Device::open(&joined, crate::device::Access::WriteExclusive)?.write_superblock(&superblock(p, block_size)?)?;
        return Ok(joined);
    }
    let file = header_file(run_dir, &p.uuid);
    let sb = superblock(p, block_size)?;
    let mut bytes = vec![0u8; (HEADER_SECTORS * 512) as usize];
    bytes[SB_START as usize..].copy_from_slice(&sb.to_bytes());
    crate::files::write_atomically(&file, &bytes).map_err(|e| HeaderError::Io(file.clone(), e))?;
    join(&file, dev, p)
}

/// The header's superblock.
fn superblock(p: &Backing, block_size: u32) -> Result<Superblock, HeaderError> {
    let label = Label::new(&p.label).map_err(|e| HeaderError::Label(e.to_string()))?;
    let mut sb = Superblock::new_backing(&BackingParams {
        uuid: p.uuid,
        set_uuid: p.set_uuid.unwrap_or(Uuid::nil()),
        label,
        block_sectors: u16::try_from(block_size / 512).map_err(|_| HeaderError::BlockSize(block_size))?,
        bucket_sectors: 1024,
        data_offset: HEADER_SECTORS,
        cache_mode: p.cache_mode,
    });
    sb.set_state(p.state);
    sb.seal();
    Ok(sb)
}

/// The loop device over the header `file` and the dm device joining it in
/// front of `dev`.
fn join(file: &Path, dev: &Device, p: &Backing) -> Result<PathBuf, HeaderError> {
    // Held open until the dm table holds the loop device: autoclear would
    // take it down at our close otherwise.
    let loop_dev = attach_loop(file)?;
    let err_loop = |e| HeaderError::Loop(file.to_owned(), e);
    let (lmaj, lmin) = (loop_dev.major().map_err(err_loop)?, loop_dev.minor().map_err(err_loop)?);
    let rdev = dev.rdev().unwrap_or(0);
    let (maj, min) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));

    let name = dm_name(&p.uuid);
    let uuid = dm_uuid(&p.uuid);
    let err = dm_err(&name);
    need_module("dm_mod", "/dev/mapper/control")?;
    let dm = DM::new().map_err(&err)?;
    let dm_name = DmName::new(&name).map_err(&err)?;
    let dm_uuid = DmUuid::new(&uuid).map_err(&err)?;
    // No udev cookie is passed anywhere: this runs in udev workers (at
    // boot, for many devices at once), where waiting for udev to process
    // the new device's events would block the very workers that must
    // process them. The rules skip the joined device (DM_UUID BCACHETAB-*):
    // this tool registers it.
    dm.device_create(dm_name, Some(dm_uuid), DmOptions::default()).map_err(&err)?;
    let id = DevId::Name(dm_name);
    let table = vec![
        (0, HEADER_SECTORS, "linear".to_owned(), format!("{lmaj}:{lmin} 0")),
        (HEADER_SECTORS, dev.sectors(), "linear".to_owned(), format!("{maj}:{min} 0")),
    ];
    let loaded = dm
        .table_load(&id, &table, DmOptions::default())
        .map_err(&err)
        .and_then(|_| resume(&dm, &name));
    let info = match loaded {
        Ok(info) => info,
        Err(e) => {
            let _ = dm.device_remove(&id, DmOptions::default());
            return Err(e);
        }
    };
    drop(loop_dev);
    Ok(PathBuf::from(format!("/dev/dm-{}", nix::sys::stat::minor(info))))
}

nix::ioctl_readwrite!(dm_dev_suspend, 0xfd, devicemapper_sys::DM_DEV_SUSPEND_CMD, devicemapper_sys::dm_ioctl);

/// Activates the loaded table (DM_DEV_SUSPEND without the suspend flag)
/// without a udev cookie, which the devicemapper crate always passes and
/// then waits on when udev runs; returns the device number.
fn resume(dm: &DM, name: &str) -> Result<u64, HeaderError> {
    let fail = |msg: String| HeaderError::Dm { name: name.to_owned(), msg };
    let mut hdr = devicemapper_sys::dm_ioctl {
        version: [4, 0, 0],
        data_size: std::mem::size_of::<devicemapper_sys::dm_ioctl>() as u32,
        data_start: std::mem::size_of::<devicemapper_sys::dm_ioctl>() as u32,
        ..Default::default()
    };
    if name.len() >= hdr.name.len() {
        return Err(fail("name too long".into()));
    }
    for (d, b) in hdr.name.iter_mut().zip(name.bytes()) {
        *d = b as _;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: a dm_ioctl header sized as data_size says, on the control
    // device's open descriptor.
    unsafe { dm_dev_suspend(dm.file().as_raw_fd(), &mut hdr) }.map_err(|e| fail(format!("resume: {}", e.desc())))?;
    Ok(hdr.dev)
}

/// Loads a kernel module unless the device node it provides is there
/// (devtmpfs creates it on load; a minimal boot may not have run
/// kmod-static-nodes, whose nodes would load the module on open).
fn need_module(module: &str, node: &str) -> Result<(), HeaderError> {
    if Path::new(node).exists() {
        return Ok(());
    }
    let status = std::process::Command::new("modprobe").arg(module).status();
    match status {
        Ok(s) if s.success() && Path::new(node).exists() => Ok(()),
        Ok(_) => Err(HeaderError::Io(node.into(), io::Error::other(format!("modprobe {module} failed")))),
        Err(e) => Err(HeaderError::Io(node.into(), e)),
    }
}

/// A loop device over `file` that goes away when its last user (the dm
/// table) lets go. Concurrent callers may pick the same free device: the
/// loser retries with the next.
fn attach_loop(file: &Path) -> Result<loopdev::LoopDevice, HeaderError> {
    let err = |e| HeaderError::Loop(file.to_owned(), e);
    need_module("loop", "/dev/loop-control")?;
    let control = loopdev::LoopControl::open().map_err(err)?;
    let mut last = None;
    for _ in 0..64 {
        let dev = control.next_free().map_err(err)?;
        match dev.with().autoclear(true).attach(file) {
            Ok(()) => return Ok(dev),
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => last = Some(e),
            Err(e) => return Err(err(e)),
        }
    }
    Err(err(last.unwrap_or_else(|| io::Error::other("no free loop device"))))
}

/// The superblock the kernel keeps in a header set up at this boot: how
/// the state file learns of attach, dirty and stale on stock kernels.
pub fn read_back(run_dir: &Path, uuid: &Uuid) -> Option<Superblock> {
    let bytes = fs::read(header_file(run_dir, uuid)).ok()?;
    Superblock::parse(bytes.get(SB_START as usize..)?).ok()
}
