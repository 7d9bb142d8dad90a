//! Commands that talk to the bcache driver through sysfs.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// Detach a backing device from its cache set, after writing back its
/// dirty data.
///
/// The kernel writes the dirty data back, then lets go of the set; until
/// then the device stays attached. For a device of /etc/bcachetab, its line
/// names no set once the kernel is told, and the command waits for the
/// kernel to show the detach done (the device's cache link gone, its
/// superblock as the kernel holds it naming no set), showing the dirty data
/// left as it drains, then records the end in the state file. Until that
/// record, no boot runs the device without its set, which may still hold
/// dirty data for it. A device with a bcache superblock of its own is not
/// waited for: its superblock records the end.
///
/// When the state file cannot be written (a read-only /var), the end is
/// kept in /run/bcache/state.journal for `bcache tab reconcile`, and the
/// command fails: a power cut before the merge loses it.
#[derive(clap::Args, Debug)]
#[command(after_help = "Exit status: 0 once the detach is done and recorded (with --no-wait, once \
    it is started); 1 otherwise. A detach once started goes on in the kernel whatever the command does.")]
pub struct DetachArgs {
    /// Return once the kernel is told, as bcache-tools always did: the end
    /// is recorded from the kernel's event, or by `bcache tab reconcile`
    /// (`bcache tab list`), whichever sees it first.
    #[arg(long)]
    no_wait: bool,
    /// Give up waiting once the dirty data left has not changed for this
    /// many seconds (the writeback is stuck); the detach goes on in the
    /// kernel, and `bcache detach` again waits for it.
    #[arg(long, value_name = "SECONDS", default_value_t = 300, conflicts_with = "no_wait")]
    timeout: u64,
    /// The registered backing device.
    #[arg(value_name = "BDEV")]
    bdev: PathBuf,
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

/// Change the cache mode of a registered backing device: writethrough,
/// writeback, writearound or none.
///
/// For a device of /etc/bcachetab, its line's mode changes first, then the
/// state file's record, and only then is the kernel told: a power cut
/// anywhere between leaves a record that keeps the device waiting for its
/// cache set wherever the set may hold dirty data. A switch to writeback
/// is recorded before the kernel can write a byte dirty; a switch away
/// from writeback keeps writeback recorded while the device has a set (its
/// dirty data is written back by the kernel, unseen). If the state file
/// cannot be written (a read-only /var), nothing is changed. A line with
/// timeout= cannot be switched to writeback: remove timeout= first.
///
/// The device must be registered (a backing device, its dm device, or
/// /dev/bcacheN); changing the mode in the superblock of a device that is
/// not registered is not supported yet.
#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  bcache set-cachemode /dev/sdb writeback\n\n\
    Exit status: 0 once the kernel runs the device in the new mode; 1 otherwise.")]
pub struct SetCachemodeArgs {
    /// The registered backing device.
    #[arg(value_name = "BDEV")]
    bdev: PathBuf,
    /// writethrough, writeback, writearound or none.
    #[arg(value_name = "MODE")]
    mode: CacheMode,
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

pub fn detach(args: &DetachArgs) -> anyhow::Result<Outcome> {
    use bcache::tab::transition::{self, DetachWait, Detached};

    let sysfs = Sysfs::default();
    let dir = backing_dir(&sysfs, &args.bdev)?;
    let name = args.bdev.display().to_string();
    let env = Env::default();
    if !dir.join("cache").exists() {
        // A detach that ended unrecorded (--no-wait, an event lost, a
        // read-only /var): its end goes to the state file now.
        if let Some(uuid) = backing_uuid(&sysfs, &dir).filter(|u| recorded_set(&env, u).is_some()) {
            if transition::detach_shown(&env, &uuid, &dir) {
                record_end(&env, &name, &uuid)?;
                eprintln!("bcache: {name}: detached from its cache set; recorded in {}", env.state.display());
                return Ok(Outcome::Ok);
            }
        }
        bail!("{name}: not attached to a cache set");
    }
    let mut progress = |dirty: &str| eprintln!("bcache detach: {name}: writing back, {dirty} of dirty data left");
    let wait = (!args.no_wait).then(|| DetachWait { stall: Duration::from_secs(args.timeout), limit: None, progress: &mut progress });
    let done = transition::detach(&env, &name, &dir, wait).map_err(|e| end_not_recorded(&env, &name, e))?;
    let in_tab = match done {
        Detached::NotTab => false,
        Detached::Started { in_tab } | Detached::Finished { in_tab } => in_tab,
        Detached::StillDetaching { in_tab, dirty } => {
            tab_changed(&env, &name, in_tab);
            bail!(
                "{name}: still detaching: the dirty data left ({}) has not changed for {} s; the kernel goes \
                 on with the detach, and the state file keeps the cache set until its end is seen: run \
                 bcache detach {name} again to wait for it",
                dirty.as_deref().unwrap_or("unknown"),
                args.timeout
            );
        }
        Detached::Gone { in_tab } => {
            tab_changed(&env, &name, in_tab);
            bail!(
                "{name}: stopped before the detach was seen to end: the state file keeps the cache set, so \
                 it is registered with the set again"
            );
        }
    };
    tab_changed(&env, &name, in_tab);
    Ok(Outcome::Ok)
}

fn tab_changed(env: &Env, name: &str, in_tab: bool) {
    if in_tab {
        eprintln!("bcache: {}: cache set of {name} now none", env.tab.display());
    }
}

fn backing_uuid(sysfs: &Sysfs, dir: &Path) -> Option<Uuid> {
    sysfs.read(&dir.join("backing_dev_uuid")).ok()?.parse().ok()
}

/// The set a bcachetab device's record names, if any.
fn recorded_set(env: &Env, uuid: &Uuid) -> Option<Uuid> {
    bcache::tab::records::State::load(&env.state).ok()?.get(uuid).filter(|r| !r.stale)?.attached
}

fn record_end(env: &Env, name: &str, uuid: &Uuid) -> anyhow::Result<()> {
    bcache::tab::transition::record_detached(env, uuid).map_err(|e| end_not_recorded(env, name, e))
}

/// The detach ended but the state file could not take it: it went to the
/// journal (the error of a write-ahead step would say nothing changed).
fn end_not_recorded(env: &Env, name: &str, e: ApplyError) -> anyhow::Error {
    match e {
        ApplyError::State(bcache::tab::records::StateError::WriteAhead { path, error, .. }) if path != env.journal => anyhow::anyhow!(
            "{name}: detached from its cache set, but the state file cannot record it ({}: {}): it is kept \
             in {}, and bcache tab reconcile records it once the state file is writable; a power cut before \
             that loses it, and the next boot keeps the device for its old set (bcachetab(5))",
            path.display(),
            bcache::os_error_text(&error),
            env.journal.display()
        ),
        e => e.into(),
    }
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

pub fn set_cachemode(args: &SetCachemodeArgs) -> anyhow::Result<Outcome> {
    let sysfs = Sysfs::default();
    let name = args.bdev.display().to_string();
    let rdev = block_rdev(&args.bdev)?;
    let dir = sysfs.backing_dir(&name, rdev).map_err(|_| {
        anyhow::anyhow!(
            "{name}: not a registered backing device: its cache mode is changed through the kernel, so it \
             must be registered (bcache register, or bcache tab apply); editing an unregistered device's \
             superblock is not supported yet"
        )
    })?;
    let env = Env::default();
    let in_tab = bcache::tab::transition::set_cache_mode(&env, &name, &dir, args.mode)?;
    if in_tab {
        eprintln!("bcache: {}: cache mode of {name} now {}", env.tab.display(), args.mode.name());
    }
    Ok(Outcome::Ok)
}
