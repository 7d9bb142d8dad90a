//! Access to the devices that hold (or will hold) a superblock: block
//! devices and, for images, regular files.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::os_error_text;
use crate::superblock::{DeviceGeometry, ShortRead, Superblock, SB_BLOCK_LEN, SB_START};

nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
nix::ioctl_read_bad!(blksszget, nix::request_code_none!(0x12, 104), libc_int);

#[allow(non_camel_case_types)]
type libc_int = std::ffi::c_int;

/// Failures of device access, each naming the device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{path}: {}", os_error_text(.error))]
    Open { path: PathBuf, error: io::Error },
    #[error("{path}: device is in use (mounted, held by device-mapper, md or bcache, or opened exclusively)")]
    Busy { path: PathBuf },
    #[error("{path}: not a block device or regular file")]
    NotADevice { path: PathBuf },
    #[error("{path}: {what}: {}", os_error_text(.error))]
    Io { path: PathBuf, what: &'static str, error: io::Error },
    #[error("{path}: {error}")]
    Short { path: PathBuf, error: ShortRead },
    #[error("{path}: cannot probe for signatures: {msg}")]
    Probe { path: PathBuf, msg: String },
}

/// How a device is to be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    /// Read and write, holding the block device exclusively (`O_EXCL`) so
    /// that nothing mounts or claims it while we write, and failing when
    /// something already does.
    WriteExclusive,
}

/// An open device with the geometry that matters to bcache.
#[derive(Debug)]
pub struct Device {
    path: PathBuf,
    file: File,
    is_block: bool,
    size: u64,
    logical_block_size: u32,
    preferred_block_size: u32,
    rdev: u64,
}

impl Device {
    pub fn open(path: &Path, access: Access) -> Result<Device, DeviceError> {
        let meta = std::fs::metadata(path)
            .map_err(|error| DeviceError::Open { path: path.to_owned(), error })?;
        let ft = meta.file_type();
        let is_block = ft.is_block_device();
        if !is_block && !ft.is_file() {
            return Err(DeviceError::NotADevice { path: path.to_owned() });
        }
        let mut opts = OpenOptions::new();
        opts.read(true);
        if access == Access::WriteExclusive {
            opts.write(true);
            if is_block {
                opts.custom_flags(nix::libc::O_EXCL);
            }
        }
        let file = opts.open(path).map_err(|error| {
            if error.raw_os_error() == Some(nix::libc::EBUSY) {
                DeviceError::Busy { path: path.to_owned() }
            } else {
                DeviceError::Open { path: path.to_owned(), error }
            }
        })?;
        let io_err = |what, error| DeviceError::Io { path: path.to_owned(), what, error };
        let (size, logical_block_size, preferred_block_size) = if is_block {
            let mut size = 0u64;
            // SAFETY: BLKGETSIZE64 writes one u64 to the pointer.
            unsafe { blkgetsize64(file.as_raw_fd(), &mut size) }
                .map_err(|e| io_err("BLKGETSIZE64", e.into()))?;
            let mut lbs: libc_int = 0;
            // SAFETY: BLKSSZGET writes one int to the pointer.
            unsafe { blksszget(file.as_raw_fd(), &mut lbs) }
                .map_err(|e| io_err("BLKSSZGET", e.into()))?;
            (size, lbs as u32, lbs as u32)
        } else {
            // An image gets the logical block size of whatever device it
            // is later attached as (a loop device's is 512 unless set);
            // bcache-tools defaults its block size to the file system's
            // preferred I/O size, and so do we.
            // Saturated: a preference, clamped to a page later, that a cast
            // could truncate to a tiny or zero size.
            (meta.len(), 512, u32::try_from(meta.blksize()).unwrap_or(u32::MAX))
        };
        Ok(Device {
            path: path.to_owned(),
            file,
            is_block,
            size,
            logical_block_size,
            preferred_block_size,
            rdev: meta.rdev(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn is_block(&self) -> bool {
        self.is_block
    }
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn sectors(&self) -> u64 {
        self.size / 512
    }
    /// Logical block size in bytes (512 for a regular file).
    pub fn logical_block_size(&self) -> u32 {
        self.logical_block_size
    }
    /// The block size a new superblock gets by default: the logical block
    /// size, or a regular file's preferred I/O size.
    pub fn preferred_block_size(&self) -> u32 {
        self.preferred_block_size
    }
    /// The device number of a block device.
    pub fn rdev(&self) -> Option<u64> {
        self.is_block.then_some(self.rdev)
    }
    pub fn geometry(&self) -> DeviceGeometry {
        DeviceGeometry { logical_block_size: self.logical_block_size, sectors: self.sectors() }
    }

    fn io_err(&self, what: &'static str, error: io::Error) -> DeviceError {
        DeviceError::Io { path: self.path.clone(), what, error }
    }

    /// Reads the 4 KiB block where a superblock lives.
    pub fn read_superblock_block(&self) -> Result<Vec<u8>, DeviceError> {
        let mut buf = vec![0u8; SB_BLOCK_LEN];
        let mut got = 0;
        while got < buf.len() {
            match self.file.read_at(&mut buf[got..], SB_START + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_err("read", e)),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    /// Reads and parses the superblock without judging it.
    pub fn read_superblock(&self) -> Result<Superblock, DeviceError> {
        let block = self.read_superblock_block()?;
        Superblock::parse(&block)
            .map_err(|error| DeviceError::Short { path: self.path.clone(), error })
    }

    /// Writes a superblock the way bcache-tools does: the first 4 KiB
    /// zeroed (so no stale boot sector or signature survives in front of
    /// it), the superblock block at 4 KiB, then fsync.
    pub fn write_superblock(&self, sb: &Superblock) -> Result<(), DeviceError> {
        self.file
            .write_all_at(&[0u8; SB_START as usize], 0)
            .map_err(|e| self.io_err("write", e))?;
        self.file.write_all_at(&sb.to_bytes(), SB_START).map_err(|e| self.io_err("write", e))?;
        self.file.sync_all().map_err(|e| self.io_err("fsync", e))
    }

    /// Every signature libblkid finds: file systems, RAID and LVM members,
    /// partition tables, bcache itself.
    pub fn signatures(&self) -> Result<Vec<Signature>, DeviceError> {
        let mut found = Vec::new();
        self.probe(|sig| {
            found.push(sig);
            true
        })?;
        Ok(found)
    }

    /// The first signature libblkid finds, without looking further (what
    /// a yes/no question needs, at a fraction of the reads).
    pub fn first_signature(&self) -> Result<Option<Signature>, DeviceError> {
        let mut first = None;
        self.probe(|sig| {
            first = Some(sig);
            false
        })?;
        Ok(first)
    }

    /// Runs libblkid's probes, handing each signature to `visit` until it
    /// returns false.
    fn probe(&self, mut visit: impl FnMut(Signature) -> bool) -> Result<(), DeviceError> {
        let perr = |msg: String| DeviceError::Probe { path: self.path.clone(), msg };
        let probe = blkid::Probe::new(self.file.as_raw_fd()).map_err(perr)?;
        while probe.next().map_err(perr)? {
            let sig = if let Some(kind) = probe.value(c"TYPE") {
                Signature {
                    kind,
                    partition_table: false,
                    offset: probe.value(c"SBMAGIC_OFFSET"),
                    uuid: probe.value(c"UUID"),
                    label: probe.value(c"LABEL"),
                }
            } else if let Some(kind) = probe.value(c"PTTYPE") {
                Signature {
                    kind,
                    partition_table: true,
                    offset: probe.value(c"PTMAGIC_OFFSET"),
                    uuid: probe.value(c"PTUUID"),
                    label: None,
                }
            } else {
                continue;
            };
            if !visit(sig) {
                break;
            }
        }
        Ok(())
    }
}

/// The few functions of libblkid's low-level probing API that
/// [`Device::probe`] needs. build.rs links libblkid statically where
/// libblkid.a is installed: commands that never probe then do not pay for
/// loading it, and the others bind only what they call.
mod blkid {
    use std::ffi::{c_char, c_int, c_void, CStr};
    use std::os::unix::io::RawFd;

    #[allow(non_camel_case_types)]
    type blkid_probe = *mut c_void;

    extern "C" {
        fn blkid_new_probe() -> blkid_probe;
        fn blkid_free_probe(pr: blkid_probe);
        fn blkid_probe_set_device(pr: blkid_probe, fd: c_int, off: i64, size: i64) -> c_int;
        fn blkid_probe_enable_superblocks(pr: blkid_probe, enable: c_int) -> c_int;
        fn blkid_probe_enable_partitions(pr: blkid_probe, enable: c_int) -> c_int;
        fn blkid_do_probe(pr: blkid_probe) -> c_int;
        fn blkid_probe_lookup_value(
            pr: blkid_probe,
            name: *const c_char,
            data: *mut *const c_char,
            len: *mut usize,
        ) -> c_int;
    }

    /// A probe of the whole of an open file (which it does not close), for
    /// superblocks and partition tables.
    pub struct Probe(blkid_probe);

    fn check(what: &str, ret: c_int) -> Result<c_int, String> {
        if ret < 0 {
            Err(format!("{what} failed ({ret})"))
        } else {
            Ok(ret)
        }
    }

    impl Probe {
        pub fn new(fd: RawFd) -> Result<Probe, String> {
            // SAFETY: no arguments; a null return is handled.
            let pr = unsafe { blkid_new_probe() };
            if pr.is_null() {
                return Err("blkid_new_probe failed".into());
            }
            let probe = Probe(pr);
            // SAFETY: a live probe; libblkid does not take over the fd.
            unsafe {
                check("blkid_probe_set_device", blkid_probe_set_device(pr, fd, 0, 0))?;
                check("blkid_probe_enable_superblocks", blkid_probe_enable_superblocks(pr, 1))?;
                check("blkid_probe_enable_partitions", blkid_probe_enable_partitions(pr, 1))?;
            }
            Ok(probe)
        }

        /// Probes on to the next signature: false when there is none left.
        pub fn next(&self) -> Result<bool, String> {
            // SAFETY: a live probe.
            Ok(check("blkid_do_probe", unsafe { blkid_do_probe(self.0) })? == 0)
        }

        /// A value of the signature found last, when set and UTF-8.
        pub fn value(&self, name: &CStr) -> Option<String> {
            let mut data: *const c_char = std::ptr::null();
            let mut len = 0usize;
            // SAFETY: a live probe, a NUL-terminated name, pointers to locals.
            let ret = unsafe { blkid_probe_lookup_value(self.0, name.as_ptr(), &mut data, &mut len) };
            if ret != 0 || data.is_null() {
                return None;
            }
            // SAFETY: libblkid hands out a NUL-terminated string that lives
            // as long as the probe's current result.
            let value = unsafe { CStr::from_ptr(data) };
            value.to_str().ok().map(str::to_owned)
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            // SAFETY: a live probe, freed once.
            unsafe { blkid_free_probe(self.0) }
        }
    }
}

/// A signature found on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// libblkid's type name: "ext4", "xfs", "LVM2_member", "gpt", "bcache"...
    pub kind: String,
    pub partition_table: bool,
    /// Byte offset of the magic, when libblkid reports it.
    pub offset: Option<String>,
    /// The content's uuid (a file system's UUID, a partition table's PTUUID).
    pub uuid: Option<String>,
    /// The content's label, when it has one.
    pub label: Option<String>,
}

impl Signature {
    pub fn is_bcache(&self) -> bool {
        self.kind == "bcache"
    }
}
