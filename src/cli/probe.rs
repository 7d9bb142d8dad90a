use std::path::{Path, PathBuf};

use bcache::device::{Access, Device};
use bcache::superblock::{Superblock, SB_SECTOR};

use super::Outcome;

/// Print the identity of bcache devices, for udev.
///
/// For each device that holds a valid bcache superblock and no other
/// signature, print its uuid and type; other devices print nothing. With
/// `-o udev` the output is udev properties (ID_FS_UUID, ID_FS_UUID_ENC,
/// ID_FS_TYPE) for an IMPORT{program} rule. Always exits 0, as udev
/// helpers do, unless the output format is unknown.
///
/// As probe-bcache it behaves exactly like bcache-tools' helper: a device
/// that libblkid recognises (bcache included) prints nothing, since blkid
/// already described it, and only the magic is checked otherwise.
#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// Output format; only `udev` exists.
    #[arg(short = 'o', value_name = "FORMAT")]
    output: Option<String>,
    /// Devices to probe.
    #[arg(value_name = "DEVICE")]
    devices: Vec<PathBuf>,
}

pub fn run(args: &ProbeArgs, legacy: bool) -> anyhow::Result<Outcome> {
    let udev = match args.output.as_deref() {
        None => false,
        Some("udev") => true,
        Some(other) => {
            println!("Invalid output format {other}");
            return Ok(Outcome::Exit(1));
        }
    };
    for path in &args.devices {
        let Some(sb) = probe(path, legacy) else { continue };
        let uuid = sb.uuid.hyphenated();
        if udev {
            println!("ID_FS_UUID={uuid}\nID_FS_UUID_ENC={uuid}\nID_FS_TYPE=bcache");
        } else if legacy {
            // bcache-tools prints the uuid where the path belongs.
            println!("{uuid}: UUID=\"\" TYPE=\"bcache\"");
        } else {
            println!("{}: UUID=\"{uuid}\" TYPE=\"bcache\"", path.display());
        }
    }
    Ok(Outcome::Ok)
}

/// The superblock of a device that is bcache and nothing else.
fn probe(path: &Path, legacy: bool) -> Option<Superblock> {
    let dev = Device::open(path, Access::Read).ok()?;
    let foreign = if legacy {
        // bcache-tools skips a device libblkid recognises at all.
        dev.first_signature().ok()?.is_some()
    } else {
        dev.signatures().ok()?.iter().any(|s| !s.is_bcache())
    };
    if foreign {
        return None;
    }
    let sb = dev.read_superblock().ok()?;
    let valid = sb.offset == SB_SECTOR && sb.expected_csum() == Some(sb.csum);
    (sb.magic_ok() && (legacy || valid)).then_some(sb)
}
