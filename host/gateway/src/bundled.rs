//! The plugins bundled into the binary (built from `plugins/` and checked against a fresh build
//! by the test suite), installed into an empty plugins directory so that the gateway routes out
//! of the box.

use std::path::Path;

const FILES: &[(&str, &[u8])] = &[
    (
        "default-router.wasm",
        include_bytes!("../../../plugins/prebuilt/default-router.wasm"),
    ),
    (
        "content-router.wasm",
        include_bytes!("../../../plugins/prebuilt/content-router.wasm"),
    ),
    (
        "switchyard.toml",
        include_bytes!("../../../plugins/switchyard.toml"),
    ),
];

/// Writes the bundled plugins and manifest into `dir` when it holds no `.wasm` file. Returns
/// whether it did.
pub fn install_if_empty(dir: &Path) -> std::io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let has_plugin = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .any(|e| e.path().extension().is_some_and(|x| x == "wasm"));
    if has_plugin {
        return Ok(false);
    }
    for (name, bytes) in FILES {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(path, bytes)?;
        }
    }
    Ok(true)
}
