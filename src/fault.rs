//! Fault injection at the steps of a transition, for the tests that cut
//! the power between two of them (tests/vm_bcachetab_faults.rs). Debug
//! builds only: in a release build every point is an empty function.
//!
//! `BCACHE_FAULT=POINT:ACTION[,POINT:ACTION...]`, where ACTION is `crash`
//! (the process aborts there, as if the machine lost power: what is on
//! disk is what the step before left) or `error` (the step fails as a
//! failed sysfs write or a full disk would).

use std::io;

/// The named step is about to run: inject what `BCACHE_FAULT` asks for.
#[cfg(debug_assertions)]
pub fn point(name: &str) -> io::Result<()> {
    let Ok(spec) = std::env::var("BCACHE_FAULT") else { return Ok(()) };
    for (point, action) in spec.split(',').filter_map(|p| p.rsplit_once(':')) {
        if point != name {
            continue;
        }
        match action {
            "crash" => {
                eprintln!("bcache: fault injected: crash at {name}");
                std::process::abort();
            }
            "error" => return Err(io::Error::other(format!("fault injected at {name}"))),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn point(_name: &str) -> io::Result<()> {
    Ok(())
}
