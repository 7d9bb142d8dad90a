use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::{ArgAction, ArgMatches};
use uuid::Uuid;

use bcache::make::{self, MakeOptions, Target};
use bcache::superblock::{Label, Replacement, Role, Superblock};
use bcache::sysfs::Sysfs;
use bcache::units;

use super::Outcome;

/// Format cache and backing devices.
///
/// -C and -B set the role of the devices that follow them, so one call can
/// format a cache and its backing devices together: they share one cache
/// set uuid and attach to each other as soon as the kernel registers them.
/// Every device is checked (not in use, no other signature, sizes the
/// kernel accepts) before anything is written; a refused call changes
/// nothing.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    bcache make -C /dev/nvme0n1 -B /dev/sda /dev/sdb   # a cache and two backing devices, attached\n  \
    bcache make -B --writeback /dev/sdc --cset-uuid UUID   # join an existing cache set\n  \
    bcache make -C /dev/sdd --bucket 2M --discard")]
pub struct MakeArgs {
    /// Format the devices that follow as cache devices.
    // Append (not Count) keeps the position of every occurrence.
    #[arg(short = 'C', long = "cache", action = ArgAction::Append, num_args = 0, default_missing_value = "true")]
    cache: Vec<bool>,
    /// Format the devices that follow as backing devices.
    #[arg(short = 'B', long = "bdev", action = ArgAction::Append, num_args = 0, default_missing_value = "true")]
    bdev: Vec<bool>,
    /// Devices to format, each in the role of the last -C or -B before it.
    #[arg(value_name = "DEVICE")]
    devices: Vec<PathBuf>,
    /// Bucket size: a power of two, in bytes or with a k/M/G/T suffix
    /// [default: 512k]. Larger than 32M needs kernel 5.15 or later.
    #[arg(short = 'b', long = "bucket", value_name = "SIZE", value_parser = units::parse_sectors)]
    bucket: Option<u64>,
    /// Block size: a power of two from the device's logical block size up
    /// to 4k [default: the largest logical block size of the devices].
    #[arg(short = 'w', long = "block", value_name = "SIZE", value_parser = units::parse_sectors)]
    block: Option<u64>,
    /// Where the data starts on backing devices, in 512-byte sectors
    /// [default: 16; on a zoned device, the zone size].
    #[arg(short = 'o', long = "data-offset", alias = "data_offset", value_name = "SECTORS")]
    data_offset: Option<u64>,
    /// Cache set uuid, to add devices to an existing set [default: random].
    #[arg(long = "cset-uuid", alias = "cset_uuid", value_name = "UUID")]
    cset_uuid: Option<Uuid>,
    /// The device's own uuid (one device only) [default: random].
    #[arg(short = 'u', long = "uuid", value_name = "UUID")]
    uuid: Option<Uuid>,
    /// Backing devices start in writeback mode (default: writethrough).
    #[arg(long)]
    writeback: bool,
    /// Cache devices discard buckets before reuse.
    #[arg(long)]
    discard: bool,
    /// Cache replacement policy: lru, fifo or random.
    #[arg(
        long = "cache-replacement-policy",
        alias = "cache_replacement_policy",
        value_name = "POLICY",
        value_parser = parse_policy,
        default_value = "lru"
    )]
    cache_replacement_policy: Replacement,
    /// Overwrite an existing bcache superblock.
    #[arg(long = "wipe-bcache", alias = "wipe_bcache")]
    wipe_bcache: bool,
    /// Stop a backing device or unregister a cache set that holds a device
    /// before formatting it.
    #[arg(long)]
    force: bool,
    /// Label (at most 31 bytes), shown in /dev/bcache/by-label.
    #[arg(short = 'l', long, value_name = "LABEL", default_value = "")]
    label: String,
}

fn parse_policy(s: &str) -> Result<Replacement, String> {
    s.parse()
}

/// The role of each device from the order of -C, -B and the devices on
/// the command line.
fn targets(args: &MakeArgs, m: &ArgMatches) -> anyhow::Result<Vec<Target>> {
    let idx = |id: &str| m.indices_of(id).map(|i| i.collect::<Vec<_>>()).unwrap_or_default();
    let (cache, bdev, devs) = (idx("cache"), idx("bdev"), idx("devices"));
    args.devices
        .iter()
        .zip(devs)
        .map(|(path, at)| {
            let last = |v: &[usize]| v.iter().copied().filter(|&i| i < at).max();
            let role = match (last(&cache), last(&bdev)) {
                (Some(c), Some(b)) => if c > b { Role::Cache } else { Role::Backing },
                (Some(_), None) => Role::Cache,
                (None, Some(_)) => Role::Backing,
                (None, None) => anyhow::bail!(
                    "{}: say whether it is a cache (-C) or backing (-B) device",
                    path.display()
                ),
            };
            Ok(Target { path: path.clone(), role })
        })
        .collect()
}

pub fn run(args: &MakeArgs, m: &ArgMatches) -> anyhow::Result<Outcome> {
    let targets = targets(args, m)?;
    let opts = MakeOptions {
        bucket_sectors: args.bucket,
        block_sectors: args.block,
        data_offset: args.data_offset,
        set_uuid: args.cset_uuid,
        uuid: args.uuid,
        writeback: args.writeback,
        discard: args.discard,
        replacement: args.cache_replacement_policy,
        label: Label::new(&args.label).context("--label")?,
        wipe_bcache: args.wipe_bcache,
        force: args.force,
    };
    let plan = make::plan(&targets, &opts, &Sysfs::default())?;
    plan.write()?;
    // One write for the whole summary, as bcache-tools makes it.
    let mut out = String::new();
    for (dev, sb) in &plan.items {
        summary(&mut out, &dev.path().display().to_string(), sb);
    }
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(Outcome::Ok)
}

/// What was written, in bcache-tools 1.1's format.
fn summary(o: &mut String, path: &str, sb: &Superblock) {
    let label = String::from_utf8_lossy(sb.label_bytes());
    let kind = if sb.role() == Some(Role::Cache) { "cache" } else { "data" };
    // Writing into a String cannot fail.
    let _ = writeln!(o, "Name\t\t\t{path}");
    let _ = writeln!(o, "Label\t\t\t{label}");
    let _ = writeln!(o, "Type\t\t\t{kind}");
    let _ = writeln!(o, "UUID:\t\t\t{}", sb.uuid.hyphenated());
    let _ = writeln!(o, "Set UUID:\t\t{}", sb.set_uuid.hyphenated());
    let _ = writeln!(o, "version:\t\t{}", sb.version);
    if sb.role() == Some(Role::Cache) {
        let _ = writeln!(o, "nbuckets:\t\t{}", sb.nbuckets());
        let _ = writeln!(o, "block_size_in_sectors:\t{}", sb.block_size);
        let _ = writeln!(o, "bucket_size_in_sectors:\t{}", sb.bucket_sectors());
        let _ = writeln!(o, "nr_in_set:\t\t{}", sb.nr_in_set);
        let _ = writeln!(o, "nr_this_dev:\t\t{}", sb.nr_this_dev);
        let _ = writeln!(o, "first_bucket:\t\t{}", sb.first_bucket);
    } else {
        let _ = writeln!(o, "block_size_in_sectors:\t{}", sb.block_size);
        let _ = writeln!(o, "data_offset_in_sectors:\t{}", sb.data_offset());
    }
    o.push('\n');
}
