//! The command line: one definition of every command (also the source of
//! the man pages), dispatched on the name the binary was invoked as.

mod kernel;
mod make;
mod man;
mod probe;
mod show;
mod tab;

use std::ffi::OsString;
use std::path::Path;

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
    /// Bring up bcachetab's devices (the name udev rules and initramfs
    /// scripts use for `bcache tab apply`).
    #[command(name = "bcachetab-apply", version)]
    BcachetabApply(tab::ApplyArgs),
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
    Detach(kernel::DetachArgs),
    /// Stop a backing device (/dev/bcacheN goes away), or the cache set of a
    /// cache device.
    Stop(kernel::DevArgs),
    Run(kernel::RunArgs),
    SetCachemode(kernel::SetCachemodeArgs),
    Adopt(tab::AdoptArgs),
    Tab(tab::TabArgs),
    #[command(hide = true)]
    Generate(man::GenerateArgs),
}

/// The applet names, for invocation through links and for man pages.
pub const LEGACY_NAMES: [&str; 5] =
    ["make-bcache", "bcache-super-show", "probe-bcache", "bcache-register", "bcachetab-apply"];

/// How a command ended, beyond success.
pub enum Outcome {
    Ok,
    /// Exit with this status; the message has been printed.
    Exit(u8),
}

/// Runs the command line; returns the exit status.
pub fn main() -> u8 {
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
    let prog = program_name(&name, &args);
    let parsed = match quick_parse(&name, &args) {
        Some(parsed) => parsed,
        None => full_parse(&args),
    };
    let (applet, matches) = match parsed {
        Ok(p) => p,
        Err(e) => return usage_error(&prog, e),
    };
    match run(applet, leaf(&matches)) {
        Ok(Outcome::Ok) => 0,
        Ok(Outcome::Exit(code)) => code,
        Err(e) => {
            eprintln!("{prog}: {e:#}");
            1
        }
    }
}

/// The commands of `bcache` (the hidden `generate` aside).
const COMMANDS: [&str; 12] = [
    "make", "super-show", "probe", "register", "unregister", "attach", "detach", "stop", "run", "set-cachemode",
    "adopt", "tab",
];

/// The whole multi-call tree: what help, version, man pages and anything
/// unusual need.
fn full_parse(args: &[OsString]) -> Result<(Applet, ArgMatches), clap::Error> {
    let matches = Applet::command().try_get_matches_from(args)?;
    Ok((Applet::from_arg_matches(&matches)?, matches))
}

/// The parser of the one command invoked, and nothing else: building the
/// whole tree costs a short command like super-show a fifth of its run
/// time. `None` (use [`full_parse`]) for help, version and anything but a
/// plain command; their output needs the whole tree.
fn quick_parse(name: &str, args: &[OsString]) -> Option<Result<(Applet, ArgMatches), clap::Error>> {
    let asks_help = args[1..]
        .iter()
        .any(|a| matches!(a.to_str(), Some("-h" | "--help" | "-V" | "--version" | "help")));
    if asks_help {
        return None;
    }
    fn one<A: clap::Args + FromArgMatches>(
        name: &str,
        args: &[OsString],
        wrap: fn(A) -> Applet,
    ) -> Result<(Applet, ArgMatches), clap::Error> {
        let matches = A::augment_args(clap::Command::new(name.to_owned())).try_get_matches_from(args)?;
        Ok((wrap(A::from_arg_matches(&matches)?), matches))
    }
    fn sub(c: Command) -> Applet {
        Applet::Bcache(Bcache { command: c })
    }
    let rest = &args[1..];
    Some(match (name, args.get(1).and_then(|a| a.to_str())) {
        ("make-bcache", _) => one(name, args, Applet::MakeBcache),
        ("bcache-super-show", _) => one(name, args, Applet::BcacheSuperShow),
        ("probe-bcache", _) => one(name, args, Applet::ProbeBcache),
        ("bcache-register", _) => one(name, args, Applet::BcacheRegister),
        ("bcachetab-apply", _) => one(name, args, Applet::BcachetabApply),
        ("bcache", Some(c @ "make")) => one(c, rest, |a| sub(Command::Make(a))),
        ("bcache", Some(c @ "super-show")) => one(c, rest, |a| sub(Command::SuperShow(a))),
        ("bcache", Some(c @ "probe")) => one(c, rest, |a| sub(Command::Probe(a))),
        ("bcache", Some(c @ "register")) => one(c, rest, |a| sub(Command::Register(a))),
        ("bcache", Some(c @ "unregister")) => one(c, rest, |a| sub(Command::Unregister(a))),
        ("bcache", Some(c @ "attach")) => one(c, rest, |a| sub(Command::Attach(a))),
        ("bcache", Some(c @ "detach")) => one(c, rest, |a| sub(Command::Detach(a))),
        ("bcache", Some(c @ "stop")) => one(c, rest, |a| sub(Command::Stop(a))),
        ("bcache", Some(c @ "run")) => one(c, rest, |a| sub(Command::Run(a))),
        ("bcache", Some(c @ "set-cachemode")) => one(c, rest, |a| sub(Command::SetCachemode(a))),
        ("bcache", Some(c @ "adopt")) => one(c, rest, |a| sub(Command::Adopt(a))),
        ("bcache", Some(c @ "tab")) => one(c, rest, |a| sub(Command::Tab(a))),
        _ => return None,
    })
}

/// How messages name the program: "make-bcache", or "bcache make" when the
/// first argument names a command.
fn program_name(name: &str, args: &[OsString]) -> String {
    match args.get(1).and_then(|a| a.to_str()) {
        Some(sub) if name == "bcache" && COMMANDS.contains(&sub) => format!("{name} {sub}"),
        _ => name.to_owned(),
    }
}

/// Help and version go out as clap renders them; a usage error becomes one
/// line, like every other error, so scripts and logs get one line per
/// failure.
fn usage_error(prog: &str, e: clap::Error) -> u8 {
    use clap::error::ErrorKind::*;
    if matches!(e.kind(), DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand) {
        e.exit();
    }
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or("invalid arguments");
    let msg = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("{prog}: {msg} (see --help)");
    2
}

/// The matches of the innermost command, for arguments whose order
/// matters (make's -C/-B).
fn leaf(m: &ArgMatches) -> &ArgMatches {
    match m.subcommand() {
        Some((_, sub)) => leaf(sub),
        None => m,
    }
}

fn run(applet: Applet, leaf: &ArgMatches) -> anyhow::Result<Outcome> {
    match applet {
        Applet::MakeBcache(a) => make::run(&a, leaf),
        Applet::BcacheSuperShow(a) => show::run(&a),
        Applet::ProbeBcache(a) => probe::run(&a, true),
        Applet::BcacheRegister(a) => kernel::register(&a),
        Applet::BcachetabApply(a) => tab::apply_cmd(&a),
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
            Command::SetCachemode(a) => kernel::set_cachemode(&a),
            Command::Adopt(a) => tab::adopt(&a),
            Command::Tab(a) => tab::tab(&a),
            Command::Generate(a) => man::generate(&a),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_list_matches_the_definition() {
        let all = Applet::command();
        let bcache = all.find_subcommand("bcache").unwrap();
        let names: Vec<&str> =
            bcache.get_subcommands().filter(|c| !c.is_hide_set()).map(|c| c.get_name()).collect();
        assert_eq!(names, COMMANDS);
    }
}
