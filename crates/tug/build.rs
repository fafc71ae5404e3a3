//! Code layout for release builds.
//!
//! The kernel maps a binary's code in 64 KiB windows around each page a process touches
//! (fault-around), so a function run once keeps its neighbours resident too. With the default
//! layout, the functions an idle server runs (about 15,000, 17 MiB) are spread over all 63 MiB of
//! code, and some 45 MiB of it ends up resident. `code-layout.txt` lists those functions
//! (measured by `scripts/code-layout.py`); here the linker is told to place them together, and an
//! idle server keeps about 20 MiB of code resident (docs/benchmarks.md).
//!
//! The list names symbols (a `*` in one matches any text); rustc puts each function in a section
//! of its own named after it, and GNU gold orders input sections by name. A symbol the list names
//! that a build no longer has (renamed, or a new hash after a compiler or dependency upgrade) is
//! skipped: an outdated list costs memory, never correctness. Debug and test builds keep the
//! default linker and layout.
//!
//! Why gold, which binutils has deprecated: on Debian 12 it is the only linker at hand that orders
//! sections from a list with wildcards, which the ThinLTO names need (GNU ld has such a list only
//! from binutils 2.43; lld's list takes exact names). Its known fault with Rust, mishandling
//! sections kept with `#[used(linker)]`, does not touch this binary: of its dependencies only
//! libmimalloc-sys has a `#[used]` static, behind its `override` feature, which stays off. Without
//! `ld.gold` the build goes on with the default layout.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};

/// The list of symbols, hottest first, next to this file.
const LAYOUT_FILE: &str = "code-layout.txt";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let layout = manifest_dir.join(LAYOUT_FILE);
    println!("cargo:rerun-if-changed={LAYOUT_FILE}");
    println!("cargo:rerun-if-env-changed=TUG_CODE_LAYOUT");

    let release = env::var("PROFILE").is_ok_and(|profile| profile == "release");
    let elf_linux = env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    // TUG_CODE_LAYOUT=0 builds the default layout, for comparing the two.
    let wanted = env::var("TUG_CODE_LAYOUT").map_or(true, |value| value != "0");
    if !(release && elf_linux && wanted) {
        return;
    }
    let symbols = match fs::read_to_string(&layout) {
        Ok(text) => text,
        Err(err) => {
            println!("cargo:warning=no code layout ({}: {err}); the binary keeps the default layout", layout.display());
            return;
        }
    };
    if !on_path("ld.gold") {
        println!(
            "cargo:warning=ld.gold is not installed (Debian: binutils); the binary keeps the default code layout \
             and an idle server keeps more of its code resident"
        );
        return;
    }

    let sections: String = symbols
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        // LLVM puts functions it knows to be cold (`#[cold]`, and what only they call) in
        // `.text.unlikely.<symbol>` instead.
        .map(|symbol| format!(".text.{symbol}\n.text.unlikely.{symbol}\n"))
        .collect();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let order = out_dir.join("section-order.txt");
    fs::write(&order, sections).expect("write the section order into OUT_DIR");
    println!("cargo:rustc-link-arg-bins=-fuse-ld=gold");
    println!("cargo:rustc-link-arg-bins=-Wl,--section-ordering-file={}", order.display());
}

/// Whether an executable of this name is in one of PATH's directories.
fn on_path(name: &str) -> bool {
    env::var_os("PATH").is_some_and(|path| env::split_paths(&path).any(|dir| is_file(&dir.join(name))))
}

fn is_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file())
}
