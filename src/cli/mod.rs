//! The command line: one definition of every command (also the source of
//! the man pages), dispatched on the name the binary was invoked as.

mod kernel;
mod make;
mod man;
mod probe;
mod show;

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

/// The names the binary answers to: `bcache` and the bcache-tools names.
#[derive(Parser, Debug)]
#[command(multicall = true)]
pub enum Applet {
    #[command(name = "bcache")]
    Bcache(Bcache),
    /// Format devices for bcache (bcache-tools' name for `bcache make`).
    #[command(name = "make-bcache", version)]
    MakeBcache(make::MakeArgs),
    /// Show a bcache superblock (bcache-tools' name for `bcache super-show`).
    #[command(name = "bcache-super-show", version)]
    BcacheSuperShow(show::ShowArgs),
    /// Print udev properties of a bcache device (bcache-tools' name for
    /// `bcache probe`).
    #[command(name = "probe-bcache", version)]
    ProbeBcache(probe::ProbeArgs),
    /// Register devices with the kernel (bcache-tools' name for
    /// `bcache register`).
    #[command(name = "bcache-register", version)]
    BcacheRegister(kernel::RegisterArgs),
}

/// Manage bcache devices: format, inspect, register, attach and stop them.
#[derive(clap::Args, Debug)]
#[command(
    version,
    after_help = "Each command has its own --help. As make-bcache, bcache-super-show, probe-bcache \
                  or bcache-register (a link to this binary) it behaves like that bcache-tools command."
)]
pub struct Bcache {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    Make(make::MakeArgs),
    SuperShow(show::ShowArgs),
    Probe(probe::ProbeArgs),
    Register(kernel::RegisterArgs),
    Unregister(kernel::UnregisterArgs),
    Attach(kernel::AttachArgs),
    /// Detach a backing device from its cache set, after writing back its
    /// dirty data.
    Detach(kernel::DevArgs),
    /// Stop a backing device (/dev/bcacheN goes away), or the cache set of a
    /// cache device.
    Stop(kernel::DevArgs),
    Run(kernel::RunArgs),
    #[command(hide = true)]
    Generate(man::GenerateArgs),
}

/// The applet names, for invocation through links and for man pages.
pub const LEGACY_NAMES: [&str; 4] =
    ["make-bcache", "bcache-super-show", "probe-bcache", "bcache-register"];

/// How a command ended, beyond success.
pub enum Outcome {
    Ok,
    /// Exit with this status; the message has been printed.
    Exit(u8),
}

pub fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    // A binary run under a name that is none of ours (a copy, a test
    // harness) behaves as `bcache`.
    let name = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("bcache")
        .to_owned();
    if name != "bcache" && !LEGACY_NAMES.contains(&name.as_str()) {
        args[0] = "bcache".into();
    }
    // The command tree lives until exit: dropping it costs a short command
    // like super-show a sixth of its run time, for nothing.
    let command: &'static mut clap::Command = Box::leak(Box::new(Applet::command()));
    let matches = match command.try_get_matches_from_mut(&args) {
        Ok(m) => m,
        Err(e) => return usage_error(&usage_name(&name, &args), e),
    };
    let applet = match Applet::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => return usage_error(&usage_name(&name, &args), e),
    };
    let prog = display_name(&matches);
    match run(applet, &matches) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Exit(code)) => ExitCode::from(code),
        Err(e) => {
            eprintln!("{prog}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The program as a usage error names it: "bcache make" when the first
/// argument names a command.
fn usage_name(name: &str, args: &[OsString]) -> String {
    let sub = args.get(1).and_then(|a| a.to_str()).filter(|a| {
        name == "bcache" && Applet::command().find_subcommand("bcache").is_some_and(|b| b.find_subcommand(a).is_some())
    });
    match sub {
        Some(sub) => format!("{name} {sub}"),
        None => name.to_owned(),
    }
}

/// Help and version go out as clap renders them; a usage error becomes one
/// line, like every other error, so scripts and logs get one line per
/// failure.
fn usage_error(prog: &str, e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind::*;
    if matches!(e.kind(), DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand) {
        e.exit();
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("invalid arguments");
    let msg = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("{prog}: {msg} (see --help)");
    ExitCode::from(2)
}

/// "make-bcache" or "bcache make": how error messages name the program.
fn display_name(m: &ArgMatches) -> String {
    match m.subcommand() {
        Some(("bcache", sub)) => match sub.subcommand_name() {
            Some(cmd) => format!("bcache {cmd}"),
            None => "bcache".into(),
        },
        Some((name, _)) => name.to_owned(),
        None => "bcache".into(),
    }
}

/// The matches of the innermost command, for arguments whose order
/// matters (make's -C/-B).
fn leaf(m: &ArgMatches) -> &ArgMatches {
    match m.subcommand() {
        Some((_, sub)) => leaf(sub),
        None => m,
    }
}

fn run(applet: Applet, matches: &ArgMatches) -> anyhow::Result<Outcome> {
    let leaf = leaf(matches);
    match applet {
        Applet::MakeBcache(a) => make::run(&a, leaf),
        Applet::BcacheSuperShow(a) => show::run(&a),
        Applet::ProbeBcache(a) => probe::run(&a, true),
        Applet::BcacheRegister(a) => kernel::register(&a),
        Applet::Bcache(Bcache { command }) => match command {
            Command::Make(a) => make::run(&a, leaf),
            Command::SuperShow(a) => show::run(&a),
            Command::Probe(a) => probe::run(&a, false),
            Command::Register(a) => kernel::register(&a),
            Command::Unregister(a) => kernel::unregister(&a),
            Command::Attach(a) => kernel::attach(&a),
            Command::Detach(a) => kernel::detach(&a),
            Command::Stop(a) => kernel::stop(&a),
            Command::Run(a) => kernel::run(&a),
            Command::Generate(a) => man::generate(&a),
        },
    }
}
