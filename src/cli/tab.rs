//! bcachetab: `bcache adopt`, `bcache tab ...` and `bcachetab-apply`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use uuid::Uuid;

use bcache::tab::file::{self, DeviceIds, Entry, Tab};
use bcache::tab::records::{self, State};
use bcache::tab::status::Status;
use bcache::tab::{activate, adopt, events, identify, identity, rules, status, transition, Env};
use bcache::superblock::CacheMode;
use bcache::sysfs::Sysfs;

use super::Outcome;

/// Files the bcachetab commands use.
#[derive(clap::Args, Debug, Clone)]
pub struct Files {
    /// The bcachetab to use.
    #[arg(long, value_name = "FILE", default_value = file::DEFAULT_PATH, global = true)]
    tab: PathBuf,
    /// The state file (layouts, attach and stale marks) to use.
    #[arg(long, value_name = "FILE", default_value = records::DEFAULT_PATH, global = true)]
    state: PathBuf,
}

impl Files {
    fn env(&self) -> Env {
        Env { tab: self.tab.clone(), state: self.state.clone(), ..Env::default() }
    }
}

/// Use an existing device as a bcache backing device without reformatting it.
///
/// The device keeps its content: nothing is written to it. A line for it
/// goes into bcachetab (with a new bcache uuid that must never change), and
/// the device is brought up at once as /dev/bcacheN, and at every boot by
/// udev and the initramfs. With the patched module (kernel/) the kernel
/// takes it as it is (layout raw); on stock kernels an 8 KiB header is
/// joined in front of it with device-mapper (layout header).
///
/// The device must not be in use (unmount it first). With --cache or --cset
/// it attaches to that cache set; a writeback device then never runs
/// without its set.
///
/// Its identity (its disk's wwid or serial, partition, PARTUUID, size and
/// file system uuid) is recorded, and a device that does not match it is
/// never registered for the line. A writeback device is named by a name
/// that follows the disk (a /dev/disk/by-id link, PARTUUID=, UUID= or
/// LABEL=; see --spec): under a kernel name such as /dev/sdb, another disk
/// may be found first at the next boot (--force adopts it so anyway).
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    umount /srv/data\n  \
    bcache adopt /dev/disk/by-id/wwn-0x5000c500a1b2c3d4 --cache /dev/nvme0n1p1 --writeback --name data0\n  \
    mount /dev/bcache/data0 /srv/data")]
pub struct AdoptArgs {
    /// The device to adopt (its content is kept).
    #[arg(value_name = "DEVICE")]
    device: PathBuf,
    /// A cache device of the set to attach to (registered if it is not).
    #[arg(long, value_name = "CACHEDEV", conflicts_with = "cset")]
    cache: Option<PathBuf>,
    /// The cache set to attach to, by uuid (it may come later).
    #[arg(long, value_name = "UUID")]
    cset: Option<Uuid>,
    /// Cache mode writeback (same as --mode writeback).
    #[arg(long, conflicts_with = "mode")]
    writeback: bool,
    /// Cache mode: writethrough, writeback, writearound or none.
    #[arg(long, value_name = "MODE")]
    mode: Option<CacheMode>,
    /// Name: /dev/bcache/<NAME> and /dev/bcache/by-name/<NAME>.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Label (at most 31 bytes, no whitespace or commas).
    #[arg(short, long, value_name = "LABEL")]
    label: Option<String>,
    /// The bcache uuid of the device [default: a new random one].
    #[arg(long, value_name = "UUID")]
    uuid: Option<Uuid>,
    /// How bcachetab names the device [default: a stable name: a
    /// /dev/disk/by-id link, PARTUUID= or UUID=].
    #[arg(long, value_name = "SPEC")]
    spec: Option<String>,
    /// Options for the line, as in bcachetab(5): layout=, block=,
    /// timeout=, tunables such as sequential_cutoff=4M (repeatable).
    #[arg(short = 'o', long = "option", value_name = "KEY=VALUE")]
    options: Vec<String>,
    /// Only write the line; do not bring the device up now.
    #[arg(long)]
    no_start: bool,
    /// In writeback mode, name the device by a name that may find another
    /// disk after a reboot (a kernel name such as /dev/sdb, when it has no
    /// stable one): at a boot where it does, that disk is refused, since it
    /// is not the disk recorded at adoption. Also adopt a device with no
    /// serial, wwid, PARTUUID or file system in writeback, or one of the
    /// size of another line's such device where a cache set may hold data
    /// for either: its size is then all that tells it from another disk
    /// under its name.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    files: Files,
}

/// bcachetab: the devices used with bcache without a superblock of their own.
#[derive(clap::Args, Debug)]
pub struct TabArgs {
    #[command(subcommand)]
    command: TabCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum TabCommand {
    Apply(ApplyArgs),
    Check(CheckArgs),
    List(ListArgs),
    Wait(WaitArgs),
    /// For udev rules: print BCACHETAB_* properties of the device the event
    /// describes (from its own properties, in the environment).
    #[command(hide = true)]
    Match(MatchArgs),
    Reconcile(ReconcileArgs),
    Identify(IdentifyArgs),
    /// For udev rules: record the state a raw-registered device's change
    /// uevent carries (BCACHE_UUID, BCACHE_STATE, ...).
    #[command(hide = true)]
    Record(FilesOnly),
}

#[derive(clap::Args, Debug)]
pub struct MatchArgs {
    /// The links udev has given the device so far in this event ($links:
    /// relative to /dev, space-separated); DEVLINKS is not set until the
    /// event ends.
    #[arg(long, value_name = "LINKS", allow_hyphen_values = true)]
    links: Option<String>,
    #[command(flatten)]
    files: Files,
}

#[derive(clap::Args, Debug)]
pub struct FilesOnly {
    #[command(flatten)]
    files: Files,
}

/// Bring up bcachetab's devices (idempotent; safe to run concurrently).
///
/// Each device is registered with what bcachetab and the state file say,
/// by the kernel's register_raw (patched module) or a dm-linear header
/// (stock kernels). A writeback device that may hold dirty data on its
/// cache set waits for the set. Problems are reported as FILE:LINE and
/// the other devices still come up; the exit status is 1 if any failed.
/// For one device (--udev, or a single /dev path) only the lines naming
/// it are read closely and reported: `bcache tab check` lints the whole
/// file.
#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    /// Every line whose device is present.
    #[arg(long, conflicts_with_all = ["devices", "udev"])]
    all: bool,
    /// The device of the current udev event (DEVNAME and its properties in
    /// the environment).
    #[arg(long, conflicts_with = "devices")]
    udev: bool,
    /// Devices, or names of bcachetab lines.
    #[arg(value_name = "DEVICE|NAME")]
    devices: Vec<String>,
    #[command(flatten)]
    files: Files,
}

/// Wait for devices with a timeout= option to come up with their cache
/// set; when the timeout (counted from the device's registration at this
/// boot) passes first, run the device without its set (it is marked stale,
/// so the set's old data for it is dropped when the set returns). For
/// caches that may never return, such as ephemeral disks. Writeback devices
/// have no timeout: they wait for their set.
#[derive(clap::Args, Debug)]
pub struct WaitArgs {
    /// Every line with a timeout.
    #[arg(long, conflicts_with = "devices")]
    all: bool,
    /// Names, bcache uuids or devices of bcachetab lines.
    #[arg(value_name = "NAME|UUID|DEVICE")]
    devices: Vec<String>,
    #[command(flatten)]
    files: Files,
}

/// Check bcachetab: syntax, duplicates, devices present, what the state
/// file forbids (a layout switch while a cache holds data), and a device
/// running without its line's set whose stale mark could not be recorded
/// (its next attach may serve the set's old data). Exit status 1 on any
/// problem.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    files: Files,
}

/// Bring the state file up to date: merge what the initramfs recorded
/// (its journal under /run/bcache, which survives switch_root), what the
/// kernel wrote into the headers of stock kernels, and each registered
/// device's attach. Run at boot once /var is writable
/// (bcachetab-reconcile.service); `tab apply`, `tab list` and `tab check`
/// merge the journal too.
#[derive(clap::Args, Debug)]
pub struct ReconcileArgs {
    #[command(flatten)]
    files: Files,
}

/// Record the identity of a line's device as it is now.
///
/// Before every registration a device is compared with what was recorded
/// when it was adopted (its disk's wwid or serial, its partition, PARTUUID
/// and size, and, on a disk without an id, its file system's uuid), and one
/// that differs is refused: if disks are found in another order at boot, a
/// line's name may find another disk, and a writeback device's dirty data
/// would be written onto it. A larger size is recorded by itself. Run this
/// for the same device changed on purpose: a device shrunk after bcache
/// detach; with --force, a disk replaced by a copy of it, a file system
/// remade through its bcache device, a partition table rewritten. A device
/// another line's record names is never recorded.
#[derive(clap::Args, Debug)]
pub struct IdentifyArgs {
    /// Names, bcache uuids or devices of bcachetab lines.
    #[arg(value_name = "NAME|UUID|DEVICE", required = true)]
    devices: Vec<String>,
    /// Record a device that differs in more than its size (another disk id,
    /// partition or file system), or that cannot be told from another
    /// line's device (neither has a serial, wwid, PARTUUID or file system,
    /// both have one size, and a cache set may hold data for one of them):
    /// only for the line's own device changed, never for another disk
    /// found under its name.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    files: Files,
}

/// List bcachetab's devices with their live state (up, up without its
/// line's set and what the record does about it, waiting and why, down,
/// missing).
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// JSON, for scripts.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    files: Files,
}

fn load_tab(path: &Path) -> anyhow::Result<Tab> {
    Tab::load(path).with_context(|| format!("{}: cannot read", path.display()))
}

fn report_tab_errors(tab: &Tab) -> bool {
    for e in &tab.errors {
        eprintln!("bcache tab: {e}");
    }
    !tab.errors.is_empty()
}

pub fn tab(args: &TabArgs) -> anyhow::Result<Outcome> {
    match &args.command {
        TabCommand::Apply(a) => apply_cmd(a),
        TabCommand::Check(a) => check(a),
        TabCommand::List(a) => list(a),
        TabCommand::Wait(a) => wait(a),
        TabCommand::Reconcile(a) => reconcile(a),
        TabCommand::Identify(a) => identify(a),
        TabCommand::Match(a) => udev_match(a),
        TabCommand::Record(a) => {
            events::record_uevent(&a.files.env(), &env_prop)?;
            Ok(Outcome::Ok)
        }
    }
}

fn env_prop(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// `file:line: message` for a line.
fn at(tab: &Tab, e: &Entry) -> String {
    at_line(&tab.path, e)
}

fn at_line(tab_path: &Path, e: &Entry) -> String {
    e.at(tab_path)
}

pub fn apply_cmd(args: &ApplyArgs) -> anyhow::Result<Outcome> {
    let mut env = args.files.env();
    if args.udev {
        env.event = Some(DeviceIds::from_props(&env_prop));
    }
    // What the initramfs recorded decides how its devices come up here.
    if let Err(e) = records::merge_journal(&env.store()) {
        eprintln!("bcache tab apply: {e}");
    }
    if let Some(outcome) = apply_one(&env, args)? {
        return Ok(outcome);
    }
    let tab = load_tab(&env.tab)?;
    let mut failed = report_tab_errors(&tab);
    let mut todo: Vec<(&Entry, PathBuf)> = Vec::new();
    let resolver = identity::Resolver::default();
    if args.all {
        for e in &tab.entries {
            match resolver.resolve(&e.device) {
                Some(p) => todo.push((e, p)),
                None => {
                    eprintln!("bcache tab apply: {}: device: no device is {}", at(&tab, e), e.device);
                    failed = true;
                }
            }
        }
    } else if args.devices.is_empty() {
        bail!("name devices or lines to bring up, or pass --all");
    } else {
        for d in &args.devices {
            // A device argument is the device; a name or uuid is looked up.
            let given = std::fs::canonicalize(d).ok().filter(|p| p.starts_with("/dev/"));
            match find_entry(&tab, d).map(|e| (e, given.clone().or_else(|| resolver.resolve(&e.device)))) {
                Some((e, Some(p))) => todo.push((e, p)),
                Some((e, None)) => {
                    eprintln!("bcache tab apply: {}: {} is missing", at(&tab, e), e.device);
                    failed = true;
                }
                None => {
                    eprintln!("bcache tab apply: {d}: no line of {} names it", tab.path.display());
                    failed = true;
                }
            }
        }
    }
    failed |= !bring_up(&env, &tab.path, &todo);
    Ok(if failed { Outcome::Exit(1) } else { Outcome::Ok })
}

/// `tab apply --udev` and `tab apply /dev/X`: only the lines naming the
/// device are parsed (Tab::find_device), at every event of every disk.
/// None when no line names it by its ids: then the whole table decides,
/// path lines through links outside /dev/disk included.
fn apply_one(env: &Env, args: &ApplyArgs) -> anyhow::Result<Option<Outcome>> {
    let read = || file::read_text(&env.tab).with_context(|| format!("{}: cannot read", env.tab.display()));
    let (dev, text, ids) = if let Some(ids) = &env.event {
        let dev = env_prop("DEVNAME").context("--udev: no DEVNAME in the environment")?;
        (PathBuf::from(dev), read()?, ids.clone())
    } else {
        let [d] = args.devices.as_slice() else { return Ok(None) };
        if args.all || !d.starts_with("/dev/") {
            return Ok(None);
        }
        let text = read()?;
        // libblkid reads the device for its file system's uuid and label
        // (most of this process's page faults): only when a line names a
        // device by them (PARTUUID= and PARTLABEL= count too, harmlessly).
        let probe = ["UUID=", "LABEL="].iter().any(|t| memchr::memmem::find(text.as_bytes(), t.as_bytes()).is_some());
        let Some((real, ids)) = identity::device_ids(Path::new(d), probe) else { return Ok(None) };
        (real, text, ids)
    };
    let (entry, errors) = Tab::find_device(&text, &env.tab, &ids);
    if entry.is_none() && !args.udev {
        return Ok(None);
    }
    for e in &errors {
        eprintln!("bcache tab: {e}");
    }
    let up = entry.is_none_or(|e| bring_up(env, &env.tab, &[(&e, dev)]));
    Ok(Some(if up && errors.is_empty() { Outcome::Ok } else { Outcome::Exit(1) }))
}

/// Brings up each line's device, reporting each; false when one failed.
fn bring_up(env: &Env, tab_path: &Path, todo: &[(&Entry, PathBuf)]) -> bool {
    let mut ok = true;
    for (e, path) in todo {
        let at = at_line(tab_path, e);
        // Found up without its set (registered by hand): marked as tab
        // list would.
        let up = activate::bring_up(env, e, path).and_then(|st| match &st {
            Status::Up { without_set: Some(w), .. } if w.mark == status::Mark::Unmarked => {
                events::mark_if_without_set(env, e, path)
            }
            _ => Ok(st),
        });
        match up {
            Ok(st) => println!("{at}: {}: {st}", path.display()),
            Err(err) => {
                eprintln!("bcache tab apply: {at}: {}: {err}", path.display());
                ok = false;
            }
        }
    }
    ok
}

/// The line a command-line argument names: its name, its bcache uuid, or
/// its device.
fn find_entry<'t>(tab: &'t Tab, arg: &str) -> Option<&'t Entry> {
    tab.by_name(arg)
        .or_else(|| arg.parse::<Uuid>().ok().and_then(|u| tab.by_uuid(&u)))
        .or_else(|| identity::entry_for_device(tab, Path::new(arg)))
}

fn wait(args: &WaitArgs) -> anyhow::Result<Outcome> {
    let env = args.files.env();
    let tab = load_tab(&env.tab)?;
    let mut failed = false;
    let entries: Vec<&Entry> = if args.all {
        tab.entries.iter().filter(|e| e.options.timeout.is_some()).collect()
    } else if args.devices.is_empty() {
        bail!("name the lines to wait for, or pass --all");
    } else {
        let mut found = Vec::new();
        for d in &args.devices {
            match find_entry(&tab, d) {
                Some(e) => found.push(e),
                None => {
                    eprintln!("bcache tab wait: {d}: no line of {} names it", tab.path.display());
                    failed = true;
                }
            }
        }
        found
    };
    // One thread per device: their timeouts run side by side.
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = entries.iter().map(|e| s.spawn(|| transition::wait(&env, e))).collect();
        handles.into_iter().map(|h| h.join().expect("wait does not panic")).collect()
    });
    for (e, r) in entries.iter().zip(results) {
        match r {
            Ok(transition::Waited::Up(st)) => println!("{}: {st}", at(&tab, e)),
            Ok(transition::Waited::RanWithout { after }) => eprintln!(
                "bcache tab wait: warning: {}: cache set {} did not come within {}s: running without it \
                 (marked stale: its old data there is dropped when it returns)",
                at(&tab, e),
                e.cset.map_or("-".into(), |c| c.to_string()),
                after.as_secs()
            ),
            Ok(transition::Waited::NoTimeout(st)) => println!("{}: {st}", at(&tab, e)),
            Err(err) => {
                eprintln!("bcache tab wait: {}: {err}", at(&tab, e));
                failed = true;
            }
        }
    }
    Ok(if failed { Outcome::Exit(1) } else { Outcome::Ok })
}

fn identify(args: &IdentifyArgs) -> anyhow::Result<Outcome> {
    let env = args.files.env();
    let tab = load_tab(&env.tab)?;
    let resolver = identity::Resolver::default();
    let mut failed = false;
    for d in &args.devices {
        let Some(e) = find_entry(&tab, d) else {
            eprintln!("bcache tab identify: {d}: no line of {} names it", tab.path.display());
            failed = true;
            continue;
        };
        let Some(dev) = resolver.resolve(&e.device) else {
            eprintln!("bcache tab identify: {}: no device is {}", at(&tab, e), e.device);
            failed = true;
            continue;
        };
        match identify::record(&env, &tab, e, &dev, args.force) {
            Ok(recorded) => println!("{}: {}: recorded {recorded}", at(&tab, e), dev.display()),
            Err(err) => {
                eprintln!("bcache tab identify: {}: {err}", at(&tab, e));
                failed = true;
            }
        }
    }
    Ok(if failed { Outcome::Exit(1) } else { Outcome::Ok })
}

fn reconcile(args: &ReconcileArgs) -> anyhow::Result<Outcome> {
    let env = args.files.env();
    let tab = load_tab(&env.tab)?;
    let failed = report_tab_errors(&tab);
    if events::reconcile(&env, &tab)? {
        eprintln!("bcache tab reconcile: {}: merged what the initramfs recorded", env.state.display());
    }
    Ok(if failed { Outcome::Exit(1) } else { Outcome::Ok })
}

/// The state file, with its conflicts reported; damage is reported and
/// read as an empty state (which registers conservatively).
fn load_state(env: &Env) -> (State, bool) {
    match State::load(&env.state) {
        Ok(s) => {
            for c in &s.conflicts {
                eprintln!("bcache tab: {c}");
            }
            let clean = s.conflicts.is_empty();
            (s, clean)
        }
        Err(e) => {
            eprintln!("bcache tab: {e}");
            (State::default(), false)
        }
    }
}

fn check(args: &CheckArgs) -> anyhow::Result<Outcome> {
    let env = args.files.env();
    let tab = load_tab(&env.tab)?;
    let mut failed = report_tab_errors(&tab);
    if let Err(e) = events::reconcile(&env, &tab) {
        eprintln!("bcache tab: {e}");
        failed = true;
    }
    let (st, clean) = load_state(&env);
    failed |= !clean;
    let kernel = rules::Kernel::detect(&Sysfs::default());
    let resolver = identity::Resolver::default();
    for d in identity::duplicates(&tab, &resolver) {
        eprintln!("bcache tab: {}: device: {d}", at(&tab, d.again));
        failed = true;
    }
    for e in &tab.entries {
        match resolver.resolve(&e.device) {
            None => {
                eprintln!("bcache tab: {}: device: no device is {}", at(&tab, e), e.device);
                failed = true;
            }
            Some(dev) => {
                if let Err(m) = identity::check_found(&resolver, e, st.get(&e.uuid).map(|r| &r.identity), &dev) {
                    eprintln!("bcache tab: {}: identity: {m}", at(&tab, e));
                    failed = true;
                }
            }
        }
        if let Err(why) = rules::registration(e, st.get(&e.uuid), st.is_copy, kernel) {
            eprintln!("bcache tab: {}: {why}", at(&tab, e));
            failed = true;
        }
        // Marked stale, a run without the set is safe (a timeout run is
        // one by design); unmarked, the next attach may serve old data.
        if let Status::Up { without_set: Some(w), .. } = status::status(&env, &resolver, e) {
            if w.mark == status::Mark::Unmarked {
                eprintln!("bcache tab: {}: {w}", at(&tab, e));
                failed = true;
            }
        }
    }
    Ok(if failed { Outcome::Exit(1) } else { Outcome::Ok })
}

#[derive(serde::Serialize)]
struct Row<'a> {
    line: usize,
    name: Option<&'a str>,
    device: String,
    uuid: Uuid,
    cset: Option<Uuid>,
    mode: &'static str,
    layout: Option<&'static str>,
    #[serde(flatten)]
    status: Status,
    /// Why bcachetab's rules keep a device down, if they do.
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<String>,
}

fn list(args: &ListArgs) -> anyhow::Result<Outcome> {
    let env = args.files.env();
    let tab = load_tab(&env.tab)?;
    report_tab_errors(&tab);
    // What the initramfs and the kernel recorded since the last look; a
    // reader without write access to the state file still gets the list.
    let _ = events::reconcile(&env, &tab);
    let (st, _) = load_state(&env);
    let resolver = identity::Resolver::default();
    let mut rows: Vec<Row> = tab
        .entries
        .iter()
        .map(|e| Row {
            line: e.line,
            name: e.name.as_deref(),
            device: e.device.to_string(),
            uuid: e.uuid,
            cset: e.cset,
            mode: e.options.mode.name(),
            layout: st.get(&e.uuid).and_then(|r| r.layout).map(|l| l.name()),
            status: status::status(&env, &resolver, e),
            refused: None,
        })
        .collect();
    // A device down because the rules refuse it, or because it is not the
    // device adopted for the line: say why.
    let kernel = rules::Kernel::detect(&Sysfs::default());
    for (r, e) in rows.iter_mut().zip(&tab.entries) {
        if let Status::Down { device } = &r.status {
            let record = st.get(&e.uuid);
            r.refused = identity::check_found(&resolver, e, record.map(|r| &r.identity), Path::new(device))
                .err()
                .map(|m| m.to_string())
                .or_else(|| rules::registration(e, record, st.is_copy, kernel).err().map(|e| e.to_string()));
        }
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(Outcome::Ok);
    }
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header(["NAME", "DEVICE", "UUID", "CSET", "MODE", "LAYOUT", "STATE"]);
    for r in &rows {
        table.add_row([
            r.name.unwrap_or("-").to_owned(),
            r.device.clone(),
            r.uuid.to_string(),
            r.cset.map_or("-".into(), |c| c.to_string()),
            r.mode.to_owned(),
            r.layout.unwrap_or("-").to_owned(),
            match &r.refused {
                Some(why) => format!("{}: {why}", r.status),
                None => r.status.to_string(),
            },
        ]);
    }
    writeln!(out, "{table}")?;
    Ok(Outcome::Ok)
}

/// udev's IMPORT{program}: properties for the event's device, matched on
/// its own properties; nothing when no line names it. For a bcache device
/// (CACHED_UUID set by the kernel) the name of its line.
fn udev_match(args: &MatchArgs) -> anyhow::Result<Outcome> {
    let tab = load_tab(&args.files.tab)?;
    let entry = match env_prop("CACHED_UUID").and_then(|u| u.parse::<Uuid>().ok()) {
        Some(u) => tab.by_uuid(&u),
        None => {
            let mut ids = DeviceIds::from_props(&env_prop);
            if let Some(l) = &args.links {
                ids.links = l.split_whitespace().map(|l| format!("/dev/{l}")).collect();
            }
            tab.matching(&ids)
        }
    };
    if let Some(e) = entry {
        let mut out = std::io::stdout().lock();
        writeln!(out, "BCACHETAB_UUID={}", e.uuid.hyphenated())?;
        if let Some(links) = &args.links {
            // The device's links without those naming the file system inside,
            // which belong to the bcache device (udev before 254 has no
            // SYMLINK-=): the rule assigns this list back.
            let fs_links: Vec<String> = [("ID_FS_UUID_ENC", "disk/by-uuid/"), ("ID_FS_LABEL_ENC", "disk/by-label/")]
                .iter()
                .filter_map(|(key, dir)| env_prop(key).map(|v| format!("{dir}{v}")))
                .collect();
            let kept: Vec<&str> = links.split_whitespace().filter(|l| !fs_links.iter().any(|f| f == l)).collect();
            writeln!(out, "BCACHETAB_LINKS={}", kept.join(" "))?;
        }
        if let Some(n) = &e.name {
            writeln!(out, "BCACHETAB_NAME={n}")?;
        }
        if let Some(t) = e.options.timeout {
            writeln!(out, "BCACHETAB_TIMEOUT={t}")?;
        }
    }
    Ok(Outcome::Ok)
}

pub fn adopt(args: &AdoptArgs) -> anyhow::Result<Outcome> {
    let env = args.files.env();
    let req = adopt::Request {
        device: args.device.clone(),
        cache: args.cache.clone(),
        cset: args.cset,
        mode: if args.writeback { CacheMode::Writeback } else { args.mode.unwrap_or_default() },
        name: args.name.clone(),
        label: args.label.clone(),
        uuid: args.uuid,
        spec: args.spec.clone(),
        options: args.options.clone(),
        force: args.force,
    };
    let declared = adopt::declare(&env, &req)?;
    println!("{}: {}", at_line(&env.tab, &declared.entry), declared.entry);
    if args.no_start {
        return Ok(Outcome::Ok);
    }
    let st = adopt::start(&env, &declared)?;
    println!("{}: {st}", args.device.display());
    Ok(Outcome::Ok)
}
