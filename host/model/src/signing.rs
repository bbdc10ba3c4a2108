//! Request signatures as producers make them and as the gateway makes its deliveries': hex
//! HMAC-SHA256 of a body (`x-hmac-signature`) and Standard Webhooks (`webhook-signature`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The key bytes of a configured secret: a `whsec_` prefix means base64 (Standard Webhooks),
/// anything else is used as raw bytes — the rule the gateway verifies with.
pub fn key(secret: &str) -> Result<Vec<u8>, String> {
    match secret.trim().strip_prefix("whsec_") {
        Some(b64) => B64
            .decode(b64)
            .map_err(|_| "a whsec_ secret is not valid base64".to_string()),
        None => Ok(secret.trim().as_bytes().to_vec()),
    }
}

/// Hex HMAC-SHA256 of `body` (what a producer puts in `x-hmac-signature`).
pub fn sign_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Standard Webhooks `webhook-signature` value for `id`, `timestamp` and `body`.
pub fn sign_webhook(secret: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
}
