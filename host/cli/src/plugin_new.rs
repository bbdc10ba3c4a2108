//! `switchyard plugin new` and `switchyard plugin build`: a ready plugin project from the
//! templates in the binary (`templates/<lang>/`), and its build into `<name>.wasm`.
//!
//! A Rust project is a crate of its own (`Cargo.toml` with an empty `[workspace]`), with the
//! contract's WIT in `wit/router.wit`, a router showing decisions, errors, `context.lookup`,
//! `config.get` and logging, the cases `plugin test` runs (`cases.toml`), and a `Cargo.lock` that
//! pins the versions the project's own plugins are built and tested with.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// The languages `plugin new` writes projects in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with `wit-bindgen`, built by cargo for `wasm32-wasip2`.
    Rust,
}

/// The contract new plugins target.
const WIT: &str = include_str!("../../../wit/v0.2/router.wit");

/// The Rust template: (path in the project, text with `{{name}}` for the plugin's name).
const RUST: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
    ("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
    ("cases.toml", include_str!("../templates/rust/cases.toml")),
    ("README.md", include_str!("../templates/rust/README.md")),
    ("wit/router.wit", WIT),
];
const RUST_LOCK: &str = include_str!("../templates/rust/Cargo.lock");

/// A plugin name: what the gateway calls it (`<name>.wasm`), also a Cargo package name.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.ends_with(".next");
    if !ok {
        bail!("a plugin name is 1 to 64 characters of [A-Za-z0-9_-], starting with a letter");
    }
    Ok(())
}

/// `plugin new NAME --lang LANG [--dir DIR]`: writes the project into DIR (default `./NAME`),
/// which must not exist or be empty.
pub fn new(name: &str, lang: Lang, dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{} exists and is not empty", dir.display());
    }
    let Lang::Rust = lang;
    for (path, text) in RUST {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, text.replace("{{name}}", name))
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    std::fs::write(dir.join("Cargo.lock"), lock_for(name))?;
    Ok(dir)
}

/// The template's lock with the project's own package in its sorted place.
fn lock_for(name: &str) -> String {
    let text = RUST_LOCK.replace("{{name}}", name);
    let mut parts = text.split("\n[[package]]\n");
    let head = parts.next().unwrap_or_default().to_string();
    let mut packages: Vec<&str> = parts.collect();
    let key = |p: &&str| {
        p.lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("name = ")
            .trim_matches('"')
            .to_string()
    };
    packages.sort_by_key(key);
    std::iter::once(head.as_str())
        .chain(packages)
        .collect::<Vec<_>>()
        .join("\n[[package]]\n")
}

/// A plugin project on disk.
pub struct Project {
    pub dir: PathBuf,
    pub name: String,
}

impl Project {
    /// The project in `dir`: a Rust crate (its `Cargo.toml` names the plugin).
    pub fn open(dir: &Path) -> anyhow::Result<Project> {
        let manifest = dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).with_context(|| {
            format!(
                "{} is not a plugin project (no Cargo.toml; `switchyard plugin new` makes one)",
                dir.display()
            )
        })?;
        let cargo: toml::Table = toml::from_str(&text)
            .with_context(|| format!("{} is not valid TOML", manifest.display()))?;
        let name = cargo
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .with_context(|| format!("{} names no package", manifest.display()))?;
        Ok(Project {
            dir: dir.to_path_buf(),
            name: name.to_string(),
        })
    }

    /// Where `plugin build` puts the component.
    pub fn component(&self) -> PathBuf {
        self.dir.join(format!("{}.wasm", self.name))
    }

    /// The project's cases file.
    pub fn cases(&self) -> PathBuf {
        self.dir.join("cases.toml")
    }
}

/// `plugin build [DIR]`: builds the project's component and copies it to `DIR/<name>.wasm`.
pub fn build(dir: &Path) -> anyhow::Result<PathBuf> {
    let project = Project::open(dir)?;
    let target_installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == "wasm32-wasip2")
        });
    match target_installed {
        Ok(true) => {}
        Ok(false) => bail!("the wasm32-wasip2 target is missing: rustup target add wasm32-wasip2"),
        Err(_) => bail!(
            "rustup is not installed: see https://rustup.rs, then rustup target add wasm32-wasip2"
        ),
    }
    let out = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(dir)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo (install Rust: https://rustup.rs)")?;
    if !out.status.success() {
        bail!("cargo build failed (its messages are above)");
    }
    // The artifact cargo reports (wherever CARGO_TARGET_DIR puts it).
    let built = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .flat_map(|m| {
            m["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|f| f.as_str().map(PathBuf::from))
        })
        .rfind(|f| f.extension().is_some_and(|e| e == "wasm"))
        .context("cargo built no .wasm (is the crate a cdylib?)")?;
    let component = project.component();
    std::fs::copy(&built, &component)
        .with_context(|| format!("cannot copy {} to {}", built.display(), component.display()))?;
    Ok(component)
}
