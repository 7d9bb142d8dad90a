//! Man pages from the command definitions, so they cannot drift from
//! `--help`.

use std::path::PathBuf;

use anyhow::Context;
use clap::CommandFactory;

use super::{Applet, Outcome};

/// Write generated files.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// What to generate; only `man` exists.
    #[arg(value_parser = ["man"])]
    what: String,
    /// Directory to write into.
    dir: PathBuf,
}

/// Writes bcache.8, bcache-COMMAND.8 for each command, and a page for each
/// bcache-tools name that is not already a command page: bcache-super-show
/// and bcache-register are both a command and a legacy name with the same
/// arguments, so one page serves both.
pub fn generate(args: &GenerateArgs) -> anyhow::Result<Outcome> {
    std::fs::create_dir_all(&args.dir).with_context(|| args.dir.display().to_string())?;
    let applets = Applet::command();
    let mut written = Vec::new();
    for applet in applets.get_subcommands() {
        let name = applet.get_name();
        if name == "bcache" {
            let top = applet.clone().name("bcache");
            written.push(write_page(&args.dir, "bcache", top.clone())?);
            for sub in top.get_subcommands().filter(|s| !s.is_hide_set()) {
                let page = format!("bcache-{}", sub.get_name());
                let cmd = sub.clone().name(page.clone()).bin_name(format!("bcache {}", sub.get_name()));
                written.push(write_page(&args.dir, &page, cmd)?);
                // bcache tab apply, ...: a page each.
                for leaf in sub.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
                    let page = format!("bcache-{}-{}", sub.get_name(), leaf.get_name());
                    let cmd = leaf
                        .clone()
                        .name(page.clone())
                        .bin_name(format!("bcache {} {}", sub.get_name(), leaf.get_name()));
                    written.push(write_page(&args.dir, &page, cmd)?);
                }
            }
        }
    }
    for applet in applets.get_subcommands() {
        let name = applet.get_name().to_owned();
        if name != "bcache" && !written.contains(&name) {
            written.push(write_page(&args.dir, &name, applet.clone())?);
        }
    }
    for page in &written {
        println!("{}", args.dir.join(format!("{page}.8")).display());
    }
    Ok(Outcome::Ok)
}

fn write_page(dir: &std::path::Path, page: &str, cmd: clap::Command) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd)
        .section("8")
        .manual("bcache-tools")
        .source(concat!("bcache-tools ", env!("CARGO_PKG_VERSION")))
        .render(&mut buf)?;
    let path = dir.join(format!("{page}.8"));
    std::fs::write(&path, buf).with_context(|| path.display().to_string())?;
    Ok(page.to_owned())
}
