use std::io::Write;
use std::path::PathBuf;

use bcache::device::{Access, Device, DeviceError};
use bcache::show;

use super::Outcome;

/// Print the bcache superblock of a device.
///
/// The text output is the same, byte for byte, as bcache-tools'
/// bcache-super-show, which other programs parse. It exits 2 when the
/// superblock has a bad magic, a bad sector or (without -f) a bad checksum.
#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// Show the superblock even when its checksum is wrong.
    #[arg(short = 'f', long = "force")]
    force: bool,
    /// Print every field as JSON (whatever the superblock's state).
    #[arg(long)]
    json: bool,
    /// The device or image to read.
    #[arg(value_name = "DEVICE")]
    device: PathBuf,
}

pub fn run(args: &ShowArgs) -> anyhow::Result<Outcome> {
    let mut stdout = std::io::stdout().lock();
    // bcache-tools' messages and statuses, which scripts check.
    let device = match Device::open(&args.device, Access::Read) {
        Ok(d) => d,
        Err(e) => {
            writeln!(stdout, "Can't open dev {}: {}", args.device.display(), os_reason(&e))?;
            return Ok(Outcome::Exit(2));
        }
    };
    let sb = match device.read_superblock() {
        Ok(sb) => sb,
        Err(_) => {
            eprintln!("Couldn't read");
            return Ok(Outcome::Exit(2));
        }
    };
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &show::Report::new(&sb))?;
        writeln!(stdout)?;
        return Ok(Outcome::Ok);
    }
    let (text, err) = show::text(&sb, args.force);
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    match err {
        None => Ok(Outcome::Ok),
        Some(e) => {
            eprintln!("{e}");
            Ok(Outcome::Exit(e.exit_code()))
        }
    }
}

/// The bare system error text ("No such file or directory"), as C's
/// strerror gives it.
fn os_reason(e: &DeviceError) -> String {
    match e {
        DeviceError::Open { error, .. } | DeviceError::Io { error, .. } => bcache::os_error_text(error),
        other => other.to_string(),
    }
}
