use std::path::PathBuf;

use bcache::device::{Access, Device};

use super::Outcome;

/// Print the identity of bcache devices, for udev.
///
/// For each device that holds a bcache superblock, print its uuid and type;
/// other devices print nothing. With `-o udev` the output is udev
/// properties (ID_FS_UUID, ID_FS_UUID_ENC, ID_FS_TYPE) for an IMPORT rule.
#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// Output format; only `udev` exists.
    #[arg(short = 'o', value_name = "FORMAT", value_parser = ["udev"])]
    output: Option<String>,
    /// Devices to probe.
    #[arg(value_name = "DEVICE", required = true)]
    devices: Vec<PathBuf>,
}

pub fn run(args: &ProbeArgs) -> anyhow::Result<Outcome> {
    for path in &args.devices {
        let Ok(sb) = Device::open(path, Access::Read).and_then(|d| d.read_superblock()) else {
            continue;
        };
        if !sb.magic_ok() || sb.expected_csum() != Some(sb.csum) {
            continue;
        }
        let uuid = sb.uuid.hyphenated();
        if args.output.is_some() {
            println!("ID_FS_UUID={uuid}\nID_FS_UUID_ENC={uuid}\nID_FS_TYPE=bcache");
        } else {
            println!("{}: UUID=\"{uuid}\" TYPE=\"bcache\"", path.display());
        }
    }
    Ok(Outcome::Ok)
}
