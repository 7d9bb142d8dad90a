//! The `bcache` multi-call binary; also answers as make-bcache,
//! bcache-super-show, probe-bcache and bcache-register.

#[path = "../cli/mod.rs"]
mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
