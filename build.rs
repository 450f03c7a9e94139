//! Embeds every file under `web/token-console/public/` into the binary (no web build step):
//! writes `$OUT_DIR/assets.rs` with a table of (path, bytes) that `console::page` serves.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn collect(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, base, out)?;
        } else if path.is_file() {
            out.push(
                path.strip_prefix(base)
                    .map(Path::to_path_buf)
                    .unwrap_or(path),
            );
        }
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").map_err(std::io::Error::other)?);
    let public = manifest.join("web/token-console/public");
    println!("cargo:rerun-if-changed={}", public.display());
    let mut files = Vec::new();
    if public.is_dir() {
        collect(&public, &public, &mut files)?;
    }
    files.sort();
    let mut code = String::from("/// Files of web/token-console/public: (path relative to it, contents).\npub static ASSETS: &[(&str, &[u8])] = &[\n");
    for file in &files {
        println!("cargo:rerun-if-changed={}", public.join(file).display());
        let rel = file.to_string_lossy().replace('\\', "/");
        let abs = public.join(file);
        writeln!(
            code,
            "    ({rel:?}, include_bytes!({:?})),",
            abs.to_string_lossy()
        )
        .map_err(std::io::Error::other)?;
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(std::io::Error::other)?);
    std::fs::write(out.join("assets.rs"), code)
}
