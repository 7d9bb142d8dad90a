//! Link settings that keep the start of every command cheap (BENCHMARKS.md
//! has the measurements).
//!
//! - libblkid is linked statically when libblkid.a is installed (Debian's
//!   libblkid-dev ships it): the dynamic loader then neither maps it nor
//!   binds its ~250 symbols at every start, which commands that never probe
//!   (super-show, register, ...) paid for nothing. `BCACHE_BLKID=dynamic`
//!   links the shared library instead.
//! - The binary binds symbols lazily (`-z lazy`, as the C bcache-tools are
//!   built) instead of all at start (`-z now`, rustc's default): a command
//!   binds only the few libc functions it calls. RELRO stays (partial).
//! - The unwinder, which std needs for backtraces only (panic=abort), comes
//!   from GCC's libgcc_eh.a, as `gcc -static-libgcc` links it, instead of
//!   libgcc_s.so.1: one shared library less to load at every start. This
//!   crate's native libraries precede std's on the link line, so the
//!   linker resolves the unwinder here and, with --as-needed, leaves
//!   libgcc_s out.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=BCACHE_BLKID");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=CC");
    link_blkid();
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if target_os == "linux" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,lazy");
    }
    if target_os == "linux" && target_env == "gnu" && gcc_has("libgcc_eh.a") {
        println!("cargo:rustc-link-lib=static:-bundle=gcc_eh");
    }
}

/// Whether the C compiler (the linker driver rustc uses) has this library
/// of its own.
fn gcc_has(file: &str) -> bool {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let Ok(out) = Command::new(cc).arg(format!("-print-file-name={file}")).output() else {
        return false;
    };
    // An unknown file comes back as its bare name.
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    out.status.success() && path.is_absolute() && path.is_file()
}

fn link_blkid() {
    let mode = std::env::var("BCACHE_BLKID").unwrap_or_default();
    let libdir = pkg_config_libdir("blkid");
    if let Some(dir) = &libdir {
        println!("cargo:rustc-link-search=native={}", dir.display());
    }
    let static_lib = libdir.as_ref().map(|d| d.join("libblkid.a")).filter(|a| a.is_file());
    match (mode.as_str(), static_lib) {
        ("dynamic", _) => println!("cargo:rustc-link-lib=dylib=blkid"),
        ("" | "static", Some(_)) => println!("cargo:rustc-link-lib=static=blkid"),
        ("static", None) => panic!("BCACHE_BLKID=static, but pkg-config finds no libblkid.a"),
        ("", None) => {
            println!(
                "cargo:warning=libblkid.a not found (pkg-config blkid): linking libblkid.so, \
                 which every command then loads at start"
            );
            println!("cargo:rustc-link-lib=dylib=blkid");
        }
        (other, _) => panic!("BCACHE_BLKID={other}: expected static or dynamic"),
    }
}

/// Where pkg-config says the library lives, if pkg-config knows it.
fn pkg_config_libdir(name: &str) -> Option<PathBuf> {
    let pkg_config = std::env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".into());
    let out = Command::new(pkg_config).args(["--variable=libdir", name]).output().ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    let dir = dir.trim();
    (out.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
}
