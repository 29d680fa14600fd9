//! Embeds every file under the repository's lua/ directory, so the binary
//! carries the exact Lua code it was built with and a new module cannot be
//! forgotten.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn collect(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read lua dir").map(|e| e.expect("entry").path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "lua") {
            out.push(path.strip_prefix(root).expect("under lua/").to_path_buf());
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let root = manifest.join("../../lua").canonicalize().expect("lua/ beside rust/");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect(&root, &root, &mut files);
    let mut code = String::from("/// Lua sources embedded at build time: (path under lua/, contents).\n");
    code.push_str("pub const LUA_FILES: &[(&str, &str)] = &[\n");
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
        let _ = writeln!(
            code,
            "    ({:?}, include_str!({:?})),",
            f.display().to_string(),
            root.join(f).display().to_string()
        );
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("out dir")).join("lua_files.rs");
    std::fs::write(out, code).expect("write lua_files.rs");
}
