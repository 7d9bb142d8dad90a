//! Commands that talk to the bcache driver through sysfs.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use uuid::Uuid;

use bcache::tab::{ApplyError, Env};
use bcache::device::{Access, Device};
use bcache::layout::Backing;
use bcache::superblock::{BdevState, CacheMode, Role};
use bcache::sysfs::{Registered, Sysfs};

use super::Outcome;

/// Register bcache devices with the kernel.
///
/// Each device's superblock is checked first with the kernel's own rules,
/// so a device the kernel would refuse is reported with the reason, and
/// nothing is sent to the kernel for it. A backing device attaches to its
/// cache set when the set is registered; a device whose cache may hold
/// dirty data waits for its set before it runs.
///
/// With --raw, one backing device that holds no superblock is registered
/// through the register_raw interface of the patched module (kernel/): the
/// kernel builds its superblock from --uuid and the other options, and
/// reports state changes as uevents instead of writing it.
#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  \
    bcache register --raw /dev/sdb --uuid 5d2c9a3e-1f4b-4c6d-8e7f-901a2b3c4d5e \\\n      \
    --cset 3b7a0c1d-2e3f-4a5b-8c6d-7e8f9a0b1c2d --mode writeback --state dirty")]
pub struct RegisterArgs {
    /// Succeed silently for a device that is already registered (for udev
    /// rules, which may see a device more than once).
    #[arg(short, long, conflicts_with = "raw")]
    quiet: bool,
    /// Register one backing device without a superblock (register_raw).
    #[arg(long, requires = "uuid")]
    raw: bool,
    /// --raw: the backing device's uuid; never change it while a cache
    /// holds data for the device.
    #[arg(long, value_name = "UUID", requires = "raw")]
    uuid: Option<Uuid>,
    /// --raw: the cache set it belongs to (none when left out).
    #[arg(long, value_name = "UUID", requires = "raw")]
    cset: Option<Uuid>,
    /// --raw: sectors before the data.
    #[arg(long, value_name = "SECTORS", default_value_t = 0, requires = "raw")]
    data_offset: u64,
    /// --raw: block size in bytes [default: the device's logical block size].
    #[arg(long, value_name = "BYTES", requires = "raw")]
    block_size: Option<u32>,
    /// --raw: cache mode: writethrough, writeback, writearound or none.
    #[arg(long, value_name = "MODE", default_value = "writethrough", requires = "raw")]
    mode: CacheMode,
    /// --raw: the state recorded when the device was last seen: none, clean,
    /// dirty or stale. A clean or dirty device waits for its cache set.
    #[arg(long, value_name = "STATE", default_value = "none", value_parser = parse_state, requires = "raw")]
    state: BdevState,
    /// --raw: label (at most 32 bytes, no whitespace).
    #[arg(long, value_name = "LABEL", default_value = "", requires = "raw")]
    label: String,
    /// --raw: the device's size in sectors as recorded; a device smaller
    /// than that is refused (it must not shrink under its cache).
    #[arg(long, value_name = "SECTORS", requires = "raw")]
    size: Option<u64>,
    /// Devices to register (one with --raw).
    #[arg(value_name = "DEVICE", required = true)]
    devices: Vec<PathBuf>,
}

fn parse_state(s: &str) -> Result<BdevState, String> {
    BdevState::ALL
        .into_iter()
        .find(|st| st.name() == s)
        .ok_or_else(|| format!("unknown state '{s}' (none, clean, dirty, stale)"))
}

/// Unregister a cache set (with all its caches) or stop a backing device.
#[derive(clap::Args, Debug)]
pub struct UnregisterArgs {
    /// A cache set uuid, a cache device or a backing device.
    #[arg(value_name = "CSET-UUID|DEVICE")]
    target: String,
}

/// Attach a backing device to a registered cache set.
#[derive(clap::Args, Debug)]
pub struct AttachArgs {
    /// The cache set: its uuid, or one of its cache devices.
    #[arg(value_name = "CSET-UUID|CACHEDEV")]
    set: String,
    /// The registered backing device.
    #[arg(value_name = "BDEV")]
    bdev: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// A backing device, or (for stop) a cache device whose set to stop.
    #[arg(value_name = "DEVICE")]
    device: PathBuf,
}

/// Start a backing device without its cache set (/dev/bcacheN appears).
///
/// A backing device in state clean or dirty waits for its cache set. If
/// the set is gone for good, `run` starts it anyway. For a dirty device
/// that loses the writes still in the cache, so it needs --force.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Run a dirty device without its cache: the dirty data in the cache is
    /// lost and the device is marked stale.
    #[arg(long)]
    force: bool,
    /// The registered backing device.
    #[arg(value_name = "BDEV")]
    bdev: PathBuf,
}

fn block_rdev(path: &Path) -> anyhow::Result<u64> {
    let meta = std::fs::metadata(path).with_context(|| path.display().to_string())?;
    if !meta.file_type().is_block_device() {
        bail!("{}: not a block device", path.display());
    }
    Ok(meta.rdev())
}

/// The path the kernel is given: absolute, so it does not depend on our
/// working directory.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

pub fn register(args: &RegisterArgs) -> anyhow::Result<Outcome> {
    let sysfs = Sysfs::default();
    sysfs.bcache_dir()?;
    if args.raw {
        return register_raw(&sysfs, args);
    }
    let mut failed = false;
    let log = sysfs.kernel_log();
    bcache::fault::point("caches:before-kernel")?;
    for dev in &args.devices {
        if let Err(e) = register_one(&sysfs, dev, args.quiet) {
            eprintln!("bcache register: {e:#}");
            failed = true;
        }
    }
    bcache::fault::point("caches:after-kernel")?;
    // A cache set that came up attached the bcachetab devices waiting for
    // it: the state file must know before anything can mark them stale.
    if let Err(e) = bcache::tab::activate::after_caches_registered(log) {
        eprintln!("bcache register: {e}");
        failed = true;
    }
    Ok(if failed { Outcome::Exit(1) } else { Outcome::Ok })
}

fn register_one(sysfs: &Sysfs, dev: &Path, quiet: bool) -> anyhow::Result<()> {
    let device = Device::open(dev, Access::Read)?;
    let sb = device.read_superblock()?;
    if let Err(why) = sb.validate(&device.geometry()) {
        bail!("{}: not a valid bcache device: {why}", dev.display());
    }
    drop(device);
    sysfs.register(&absolute(dev).display().to_string(), quiet)?;
    Ok(())
}

fn register_raw(sysfs: &Sysfs, args: &RegisterArgs) -> anyhow::Result<Outcome> {
    let [dev] = args.devices.as_slice() else {
        bail!("--raw registers one device; {} were given", args.devices.len());
    };
    let raw = Backing {
        uuid: args.uuid.expect("clap requires --uuid with --raw"),
        set_uuid: args.cset,
        data_offset: args.data_offset,
        block_size: args.block_size,
        cache_mode: args.mode,
        state: args.state,
        label: args.label.clone(),
        size: args.size,
    };
    let device = Device::open(dev, Access::Read)?;
    raw.validate(&device).with_context(|| dev.display().to_string())?;
    drop(device);
    let path = absolute(dev).display().to_string();
    sysfs.register_raw(&path, &raw.line(&path))?;
    Ok(Outcome::Ok)
}

/// A cache set uuid from the command line: a uuid, or a cache device.
fn set_uuid(arg: &str) -> anyhow::Result<Uuid> {
    if let Ok(u) = arg.parse::<Uuid>() {
        return Ok(u);
    }
    let sb = Device::open(Path::new(arg), Access::Read)?.read_superblock()?;
    if !sb.magic_ok() || sb.role() != Some(Role::Cache) {
        bail!("{arg}: neither a cache set uuid nor a bcache cache device");
    }
    Ok(sb.set_uuid)
}

fn registered(sysfs: &Sysfs, path: &Path) -> anyhow::Result<Registered> {
    let rdev = block_rdev(path)?;
    sysfs.registered(rdev).with_context(|| format!("{}: not registered with bcache", path.display()))
}

fn backing_dir(sysfs: &Sysfs, path: &Path) -> anyhow::Result<PathBuf> {
    Ok(sysfs.backing_dir(&path.display().to_string(), block_rdev(path)?)?)
}

pub fn unregister(args: &UnregisterArgs) -> anyhow::Result<Outcome> {
    let sysfs = Sysfs::default();
    if let Ok(set) = args.target.parse::<Uuid>() {
        sysfs.release_set(&set, bcache::sysfs::SetAction::Unregister)?;
        return Ok(Outcome::Ok);
    }
    stop_or_unregister(&sysfs, Path::new(&args.target), bcache::sysfs::SetAction::Unregister)
}

pub fn stop(args: &DevArgs) -> anyhow::Result<Outcome> {
    stop_or_unregister(&Sysfs::default(), &args.device, bcache::sysfs::SetAction::Stop)
}

/// Backing devices are stopped; a cache device's set gets `set_action`.
/// Either returns once the kernel has let go, so a `register` or `make`
/// right after finds the device free.
fn stop_or_unregister(sysfs: &Sysfs, path: &Path, set_action: bcache::sysfs::SetAction) -> anyhow::Result<Outcome> {
    sysfs.release(path, &registered(sysfs, path)?, set_action)?;
    Ok(Outcome::Ok)
}

pub fn attach(args: &AttachArgs) -> anyhow::Result<Outcome> {
    let sysfs = Sysfs::default();
    let set = set_uuid(&args.set)?;
    sysfs.set_dir(&set)?;
    let dir = backing_dir(&sysfs, &args.bdev)?;
    let name = args.bdev.display().to_string();
    if dir.join("cache").exists() {
        bail!("{name}: already attached to a cache set; detach it first");
    }
    let env = Env::default();
    let followed = bcache::tab::transition::attach(&env, &name, &dir, set).map_err(|e| match e {
        ApplyError::Sysfs(e) => anyhow::anyhow!(
            "{e} (the kernel log, dmesg, says why: e.g. block size below the set's, or dirty data of another set)"
        ),
        e => e.into(),
    })?;
    if followed {
        eprintln!("bcache: {}: cache set of {name} now {set}", env.tab.display());
    }
    Ok(Outcome::Ok)
}

pub fn detach(args: &DevArgs) -> anyhow::Result<Outcome> {
    let sysfs = Sysfs::default();
    let dir = backing_dir(&sysfs, &args.device)?;
    let name = args.device.display().to_string();
    if !dir.join("cache").exists() {
        bail!("{name}: not attached to a cache set");
    }
    let env = Env::default();
    if bcache::tab::transition::detach(&env, &name, &dir)? {
        eprintln!("bcache: {}: cache set of {name} now none", env.tab.display());
    }
    Ok(Outcome::Ok)
}

pub fn run(args: &RunArgs) -> anyhow::Result<Outcome> {
    let sysfs = Sysfs::default();
    let dir = backing_dir(&sysfs, &args.bdev)?;
    let name = args.bdev.display().to_string();
    let attached = dir.join("cache").exists();
    let state = sysfs.read(&dir.join("state"))?;
    if state == "dirty" && !attached {
        if !args.force {
            bail!(
                "{name}: its cache set holds dirty data for it and is not attached; running it now \
                 would lose those writes. Register the cache device, or pass --force to accept the loss"
            );
        }
        eprintln!(
            "bcache run: warning: {name}: running without its cache set; the dirty data in the cache \
             is lost and the device is marked {}",
            BdevState::Stale.name()
        );
    }
    bcache::tab::transition::run_without_set(&Env::default(), &name, &dir, !attached && (state == "dirty" || state == "clean"))?;
    Ok(Outcome::Ok)
}
