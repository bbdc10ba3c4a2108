//! Request signatures: `x-hmac-signature` (hex HMAC-SHA256 of the raw body, optional `sha256=`
//! prefix) and Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature:
//! v1,<base64>` over `id.timestamp.body`, with a timestamp tolerance against replay). Several
//! secrets may be active at once (rotation); comparisons are constant-time.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

pub const HMAC_HEADER: &str = "x-hmac-signature";
pub const WEBHOOK_ID: &str = "webhook-id";
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";
/// Candidate signatures examined in one `webhook-signature` header (rotation needs two or three).
const MAX_SIGNATURES: usize = 8;

/// Why a request's signature was refused. Messages are safe to show the producer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing signature: send x-hmac-signature or the webhook-* headers")]
    Missing,
    #[error("header {0} is given more than once")]
    Duplicated(&'static str),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("signature does not match")]
    Mismatch,
    #[error("webhook-timestamp is outside the accepted window")]
    Stale,
    #[error(
        "this gateway accepts only Standard Webhooks signatures (webhook-id, webhook-timestamp, webhook-signature)"
    )]
    TimestampRequired,
}

/// Which scheme a request was verified with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// `x-hmac-signature`: no id, no timestamp.
    Hmac,
    /// Standard Webhooks, with the producer's message id (`webhook-id`).
    Webhook { message_id: String },
}

/// The active secrets and the replay window.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<Vec<u8>>,
    tolerance: Duration,
    /// Refuse the untimestamped `x-hmac-signature` scheme.
    timestamped_only: bool,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("secrets", &self.keys.len())
            .field("tolerance", &self.tolerance)
            .field("timestamped_only", &self.timestamped_only)
            .finish()
    }
}

fn single<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
) -> Result<Option<&'a str>, SignatureError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(SignatureError::Duplicated(name));
    }
    first
        .to_str()
        .map(|s| Some(s.trim()))
        .map_err(|_| SignatureError::Malformed(name))
}

impl Verifier {
    /// Secrets as configured: a `whsec_` prefix means base64 key bytes (Standard Webhooks),
    /// anything else is used as raw bytes. Empty secrets are ignored.
    pub fn new<S: AsRef<str>>(secrets: &[S], tolerance: Duration) -> Result<Self, String> {
        let mut keys = Vec::new();
        for s in secrets
            .iter()
            .map(|s| s.as_ref().trim())
            .filter(|s| !s.is_empty())
        {
            keys.push(switchyard_model::signing::key(s)?);
        }
        if keys.is_empty() {
            return Err("at least one HMAC secret is required (HMAC_SECRET)".into());
        }
        Ok(Verifier {
            keys,
            tolerance,
            timestamped_only: false,
        })
    }

    /// The same verifier, refusing `x-hmac-signature` when `yes`
    /// (`REQUIRE_TIMESTAMPED_SIGNATURES`).
    pub fn timestamped_only(mut self, yes: bool) -> Self {
        self.timestamped_only = yes;
        self
    }

    /// How long a message id must be remembered to refuse every replay of it: a timestamp is
    /// accepted from `tolerance` before to `tolerance` after it.
    pub fn replay_window(&self) -> Duration {
        self.tolerance * 2
    }

    /// The MAC of `parts` under each active key (computed once per request, whatever the number
    /// of candidate signatures).
    fn macs(&self, parts: &[&[u8]]) -> Vec<[u8; 32]> {
        self.keys
            .iter()
            .map(|key| {
                let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
                for p in parts {
                    mac.update(p);
                }
                mac.finalize().into_bytes().into()
            })
            .collect()
    }

    /// Constant-time comparison of a candidate with every expected MAC.
    fn matches(expected: &[[u8; 32]], candidate: &[u8]) -> bool {
        candidate.len() == 32
            && expected
                .iter()
                .fold(false, |found, mac| found | bool::from(mac.ct_eq(candidate)))
    }

    /// Verifies `body` against the request's signature headers at time `now_secs`.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now_secs: u64,
    ) -> Result<Verified, SignatureError> {
        if let Some(signatures) = single(headers, WEBHOOK_SIGNATURE)? {
            let id = single(headers, WEBHOOK_ID)?.ok_or(SignatureError::Malformed(WEBHOOK_ID))?;
            let ts_text = single(headers, WEBHOOK_TIMESTAMP)?
                .ok_or(SignatureError::Malformed(WEBHOOK_TIMESTAMP))?;
            let ts: u64 = ts_text
                .parse()
                .map_err(|_| SignatureError::Malformed(WEBHOOK_TIMESTAMP))?;
            if now_secs.abs_diff(ts) > self.tolerance.as_secs() {
                return Err(SignatureError::Stale);
            }
            let expected = self.macs(&[id.as_bytes(), b".", ts_text.as_bytes(), b".", body]);
            let mut any_v1 = false;
            // A bounded number of candidates: a header full of them costs no more than a few.
            for candidate in signatures.split_whitespace().take(MAX_SIGNATURES) {
                let Some(b64) = candidate.strip_prefix("v1,") else {
                    continue;
                };
                any_v1 = true;
                if b64.len() <= 64
                    && let Ok(sig) = B64.decode(b64)
                    && Self::matches(&expected, &sig)
                {
                    return Ok(Verified::Webhook {
                        message_id: id.to_string(),
                    });
                }
            }
            return Err(if any_v1 {
                SignatureError::Mismatch
            } else {
                SignatureError::Malformed(WEBHOOK_SIGNATURE)
            });
        }
        if self.timestamped_only {
            return Err(SignatureError::TimestampRequired);
        }
        let Some(value) = single(headers, HMAC_HEADER)? else {
            return Err(SignatureError::Missing);
        };
        let hex_sig = value.strip_prefix("sha256=").unwrap_or(value);
        if hex_sig.len() != 64 {
            return Err(SignatureError::Malformed(HMAC_HEADER));
        }
        let sig = hex::decode(hex_sig).map_err(|_| SignatureError::Malformed(HMAC_HEADER))?;
        if Self::matches(&self.macs(&[body]), &sig) {
            Ok(Verified::Hmac)
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use switchyard_model::signing::{sign_hex, sign_webhook};

    const NOW: u64 = 1_800_000_000;

    fn webhook(id: &str) -> Verified {
        Verified::Webhook {
            message_id: id.into(),
        }
    }

    fn verifier() -> Verifier {
        Verifier::new(&["old-secret", "new-secret"], Duration::from_secs(300)).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn hex_signature_with_any_active_secret() {
        let body = br#"{"eventId":"1"}"#;
        for secret in ["old-secret", "new-secret"] {
            let sig = sign_hex(secret.as_bytes(), body);
            assert_eq!(
                verifier().verify(&headers(&[(HMAC_HEADER, &sig)]), body, NOW),
                Ok(Verified::Hmac)
            );
            let prefixed = format!("sha256={}", sig.to_uppercase());
            assert_eq!(
                verifier().verify(&headers(&[(HMAC_HEADER, &prefixed)]), body, NOW),
                Ok(Verified::Hmac)
            );
        }
        let sig = sign_hex(b"other", body);
        assert_eq!(
            verifier().verify(&headers(&[(HMAC_HEADER, &sig)]), body, NOW),
            Err(SignatureError::Mismatch)
        );
        let sig = sign_hex(b"new-secret", body);
        assert_eq!(
            verifier().verify(&headers(&[(HMAC_HEADER, &sig)]), b"{}", NOW),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn malformed_missing_and_duplicated() {
        let v = verifier();
        assert_eq!(
            v.verify(&HeaderMap::new(), b"x", NOW),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            v.verify(&headers(&[(HMAC_HEADER, "zz")]), b"x", NOW),
            Err(SignatureError::Malformed(HMAC_HEADER))
        );
        assert_eq!(
            v.verify(&headers(&[(HMAC_HEADER, "abcd")]), b"x", NOW),
            Err(SignatureError::Malformed(HMAC_HEADER))
        );
        let sig = sign_hex(b"new-secret", b"x");
        assert_eq!(
            v.verify(
                &headers(&[(HMAC_HEADER, &sig), (HMAC_HEADER, &sig)]),
                b"x",
                NOW
            ),
            Err(SignatureError::Duplicated(HMAC_HEADER))
        );
    }

    #[test]
    fn standard_webhooks_with_replay_window() {
        let v = verifier();
        let body = b"{}";
        let sig = sign_webhook(b"new-secret", "msg_1", NOW, body);
        let ts = NOW.to_string();
        let ok = headers(&[
            (WEBHOOK_ID, "msg_1"),
            (WEBHOOK_TIMESTAMP, &ts),
            (WEBHOOK_SIGNATURE, &sig),
        ]);
        assert_eq!(v.verify(&ok, body, NOW), Ok(webhook("msg_1")));
        assert_eq!(v.verify(&ok, body, NOW + 299), Ok(webhook("msg_1")));
        assert_eq!(v.verify(&ok, body, NOW + 301), Err(SignatureError::Stale));
        assert_eq!(v.verify(&ok, body, NOW - 301), Err(SignatureError::Stale));
        // Several signatures in one header: any valid one will do.
        let many = format!("v1,AAAA {sig}");
        let h = headers(&[
            (WEBHOOK_ID, "msg_1"),
            (WEBHOOK_TIMESTAMP, &ts),
            (WEBHOOK_SIGNATURE, &many),
        ]);
        assert_eq!(v.verify(&h, body, NOW), Ok(webhook("msg_1")));
        // The id is signed: another id does not verify.
        let h = headers(&[
            (WEBHOOK_ID, "msg_2"),
            (WEBHOOK_TIMESTAMP, &ts),
            (WEBHOOK_SIGNATURE, &sig),
        ]);
        assert_eq!(v.verify(&h, body, NOW), Err(SignatureError::Mismatch));
        let h = headers(&[
            (WEBHOOK_ID, "msg_1"),
            (WEBHOOK_TIMESTAMP, "soon"),
            (WEBHOOK_SIGNATURE, &sig),
        ]);
        assert_eq!(
            v.verify(&h, body, NOW),
            Err(SignatureError::Malformed(WEBHOOK_TIMESTAMP))
        );
    }

    #[test]
    fn a_header_full_of_candidates_is_cut_short() {
        let v = verifier();
        let body = b"{}";
        let ts = NOW.to_string();
        let good = sign_webhook(b"new-secret", "m", NOW, body);
        let mut many = "v1,AAAA ".repeat(50_000);
        many.push_str(&good);
        let h = headers(&[
            (WEBHOOK_ID, "m"),
            (WEBHOOK_TIMESTAMP, &ts),
            (WEBHOOK_SIGNATURE, &many),
        ]);
        // Only the first few candidates are examined: the valid one at the end is not reached.
        assert_eq!(v.verify(&h, body, NOW), Err(SignatureError::Mismatch));
        let few = format!("v1,AAAA {good}");
        let h = headers(&[
            (WEBHOOK_ID, "m"),
            (WEBHOOK_TIMESTAMP, &ts),
            (WEBHOOK_SIGNATURE, &few),
        ]);
        assert_eq!(v.verify(&h, body, NOW), Ok(webhook("m")));
    }

    #[test]
    fn timestamped_only_refuses_the_plain_hmac_scheme() {
        let v = verifier().timestamped_only(true);
        let body = b"{}";
        let sig = sign_hex(b"new-secret", body);
        assert_eq!(
            v.verify(&headers(&[(HMAC_HEADER, &sig)]), body, NOW),
            Err(SignatureError::TimestampRequired)
        );
        let sig = sign_webhook(b"new-secret", "m", NOW, body);
        let ts = NOW.to_string();
        let h = headers(&[
            (WEBHOOK_ID, "m"),
            (WEBHOOK_TIMESTAMP, &ts),
            (WEBHOOK_SIGNATURE, &sig),
        ]);
        assert_eq!(v.verify(&h, body, NOW), Ok(webhook("m")));
        assert_eq!(v.replay_window(), Duration::from_secs(600));
    }

    #[test]
    fn whsec_secrets_are_base64_keys() {
        let key = b"0123456789abcdef0123456789abcdef";
        let secret = format!("whsec_{}", B64.encode(key));
        let v = Verifier::new(&[secret], Duration::from_secs(300)).unwrap();
        let sig = sign_hex(key, b"x");
        assert_eq!(
            v.verify(&headers(&[(HMAC_HEADER, &sig)]), b"x", NOW),
            Ok(Verified::Hmac)
        );
        assert!(Verifier::new(&["", " "], Duration::from_secs(1)).is_err());
    }
}
