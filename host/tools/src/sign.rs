//! `switchyard sign`: the headers that sign a body, as the gateway checks them, so that a
//! producer can compare its own signing with them (or send a test event with `curl`).

use switchyard_model::signing::{sign_hex, sign_webhook};

/// How requests are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scheme {
    /// `x-hmac-signature: <hex>`
    Hmac,
    /// Standard Webhooks `webhook-*` headers.
    Webhook,
}

/// The signature headers for `body` under the key bytes `key` (from
/// [`switchyard_model::signing::key`]: the gateway's rule for a configured secret). A Standard
/// Webhooks signature uses `id` and `timestamp` (seconds since the Unix epoch).
pub fn headers(
    key: &[u8],
    scheme: Scheme,
    body: &[u8],
    id: &str,
    timestamp: u64,
) -> Vec<(&'static str, String)> {
    match scheme {
        Scheme::Hmac => vec![("x-hmac-signature", sign_hex(key, body))],
        Scheme::Webhook => vec![
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", sign_webhook(key, id, timestamp, body)),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_webhooks_example_signs_as_published() {
        // The example of the Standard Webhooks specification (and its reference libraries).
        let key = switchyard_model::signing::key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let h = headers(
            &key,
            Scheme::Webhook,
            br#"{"test": 2432232314}"#,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
        );
        assert_eq!(
            h[2],
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".to_string()
            )
        );
        assert!(switchyard_model::signing::key("whsec_%%").is_err());
    }
}
