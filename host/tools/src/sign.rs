//! `switchyard sign`: the headers that sign a body, as the gateway checks them, so that a
//! producer can compare its own signing with them (or send a test event with `curl`).

use crate::load::Scheme;
use switchyard_model::signing::{key, sign_hex, sign_webhook};

/// The signature headers for `body` under `secret` (a `whsec_` key is decoded, anything else
/// is used as raw bytes: the gateway's rule). A Standard Webhooks signature uses `id` and
/// `timestamp` (seconds since the Unix epoch).
pub fn headers(
    secret: &str,
    scheme: Scheme,
    body: &[u8],
    id: &str,
    timestamp: u64,
) -> Result<Vec<(&'static str, String)>, String> {
    let key = key(secret)?;
    Ok(match scheme {
        Scheme::Hmac => vec![("x-hmac-signature", sign_hex(&key, body))],
        Scheme::Webhook => vec![
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", sign_webhook(&key, id, timestamp, body)),
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_webhooks_example_signs_as_published() {
        // The example of the Standard Webhooks specification (and its reference libraries).
        let h = headers(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            Scheme::Webhook,
            br#"{"test": 2432232314}"#,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
        )
        .unwrap();
        assert_eq!(
            h[2],
            (
                "webhook-signature",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".to_string()
            )
        );
        assert!(headers("whsec_%%", Scheme::Hmac, b"{}", "", 0).is_err());
    }
}
