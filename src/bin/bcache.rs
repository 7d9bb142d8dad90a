//! The `bcache` multi-call binary; also answers as make-bcache,
//! bcache-super-show, probe-bcache and bcache-register.
//!
//! `main` is the C entry point itself (`#![no_main]`), so std's runtime
//! set-up does not run: it finds the main thread's stack guard by parsing
//! /proc/self/maps (about 100,000 instructions and 7 system calls, a third
//! of what a short command like super-show costs otherwise; BENCHMARKS.md)
//! to name a stack overflow in its message, which then is a plain SIGSEGV.
//! What of that set-up matters is done here: closed standard descriptors
//! are reopened on /dev/null, and stdout is flushed at the end. SIGPIPE
//! keeps its default action, as in the C bcache-tools: output into a closed
//! pipe ends the process quietly instead of with an error. Arguments still
//! come from `std::env::args_os` (glibc hands them to std on its own).

// The test harness brings its own main.
#![cfg_attr(not(test), no_main)]

#[path = "../cli/mod.rs"]
mod cli;

/// Under the test harness, which brings its own main (and runs the unit
/// tests of `cli`), std's usual entry point.
#[cfg(test)]
fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(cli::main())
}

#[cfg(not(test))]
mod entry {
    use std::ffi::{c_char, c_int};
    use std::io::Write;

    use nix::libc;

    #[no_mangle]
    extern "C" fn main(_argc: c_int, _argv: *const *const c_char) -> c_int {
        reopen_closed_std_fds();
        let code = super::cli::main();
        // What std's runtime does at exit: a line not yet ended would be lost.
        let _ = std::io::stdout().flush();
        c_int::from(code)
    }

    /// Opens /dev/null as whichever of stdin, stdout and stderr is closed,
    /// as std's runtime does: otherwise a device that make opens for
    /// writing could become stdout and receive the summary.
    fn reopen_closed_std_fds() {
        let mut fds = [0, 1, 2].map(|fd| libc::pollfd { fd, events: 0, revents: 0 });
        // SAFETY: three pollfds, no waiting.
        let polled = unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) } != -1;
        for pfd in fds {
            let closed = if polled {
                pfd.revents & libc::POLLNVAL != 0
            } else {
                // SAFETY: F_GETFD only asks.
                let flags = unsafe { libc::fcntl(pfd.fd, libc::F_GETFD) };
                flags == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBADF)
            };
            // The lower descriptors are open by now, so open() returns this
            // one.
            // SAFETY: a NUL-terminated path.
            if closed && unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) } != pfd.fd {
                std::process::abort();
            }
        }
    }
}
