//! A plugin version's id: the SHA-256 of its `.wasm` file, in hex.

use sha2::{Digest, Sha256};

/// The version id of a component's bytes.
pub fn version_of(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The first 12 hex digits of a version id, for logs.
pub fn short_version(version: &str) -> &str {
    &version[..version.len().min(12)]
}
