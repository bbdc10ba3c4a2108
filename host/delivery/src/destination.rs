//! Destinations as the plugins manifest declares them (`[destinations.<name>]` in
//! `switchyard.toml`), parsed and checked. A secret is never printed: not by `Debug`, not in an
//! error, not in a log line.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use http::{HeaderName, HeaderValue};

/// Longest destination name.
pub const MAX_NAME: usize = 64;

/// One declared destination (equal when every setting, the secret included, is).
#[derive(Clone, PartialEq, Eq)]
pub struct Destination {
    pub name: String,
    pub url: reqwest::Url,
    /// The Standard Webhooks signing key (the bytes of a `whsec_` key).
    pub secret: Vec<u8>,
    pub timeout: Duration,
    /// Deliveries to it at once.
    pub max_in_flight: u32,
    /// Deliveries started per second at most (0 = unlimited).
    pub rate_per_sec: u32,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// May resolve to a loopback, private or link-local address.
    pub allow_private: bool,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destination")
            .field("name", &self.name)
            .field("url", &self.shown_url())
            .field("secret", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("rate_per_sec", &self.rate_per_sec)
            .field("headers", &self.headers.len())
            .field("allow_private", &self.allow_private)
            .finish()
    }
}

impl Destination {
    /// The URL as shown to operators: no user info, no query (either may carry a credential).
    pub fn shown_url(&self) -> String {
        let mut url = self.url.clone();
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.set_query(None);
        url.to_string()
    }
}

/// A valid destination name: 1 to 64 characters of `[A-Za-z0-9_-]` (it is a key in records and
/// metrics).
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Headers a destination's `headers` table may not set (nor any `webhook-*`): the gateway
/// writes them — the body's type and framing, the correlation id, and the Standard Webhooks
/// headers the receiver verifies.
const RESERVED_HEADERS: [&str; 6] = [
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "x-correlation-id",
];

/// Parses the manifest's `[destinations]` table; `env` reads the variables an `env:NAME` secret
/// names. Errors name the destination and the setting, never a secret's value.
pub fn parse(
    table: &toml::Table,
    env: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, Destination>, String> {
    let mut out = BTreeMap::new();
    for (name, value) in table {
        let d = value
            .as_table()
            .ok_or_else(|| format!("destinations.{name} must be a table"))?;
        out.insert(
            name.clone(),
            one(name, d, &env).map_err(|e| format!("destinations.{name}: {e}"))?,
        );
    }
    Ok(out)
}

fn one(
    name: &str,
    d: &toml::Table,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Destination, String> {
    if !valid_name(name) {
        return Err("the name must be 1 to 64 characters of [A-Za-z0-9_-]".into());
    }
    const KEYS: &[&str] = &[
        "url",
        "secret",
        "timeout_ms",
        "max_in_flight",
        "rate_per_sec",
        "headers",
        "allow_private",
    ];
    if let Some(k) = d.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!(
            "unknown setting {k:?} (known: {})",
            KEYS.join(", ")
        ));
    }
    let text = |k: &str| d.get(k).and_then(toml::Value::as_str);
    let number = |k: &str, default: i64, range: std::ops::RangeInclusive<i64>| {
        let n = match d.get(k) {
            None => default,
            Some(v) => v
                .as_integer()
                .ok_or_else(|| format!("{k} must be a number"))?,
        };
        if range.contains(&n) {
            Ok(n)
        } else {
            Err(format!(
                "{k} must be between {} and {}",
                range.start(),
                range.end()
            ))
        }
    };
    let url: reqwest::Url = text("url")
        .ok_or("url is required")?
        .parse()
        .map_err(|_| "url is not a valid URL".to_string())?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("url must be an http:// or https:// URL with a host".into());
    }
    let secret = match text("secret").ok_or("secret is required (a whsec_ key, or env:NAME)")? {
        s if s.starts_with("env:") => env(&s[4..]).ok_or_else(|| {
            format!(
                "secret names the environment variable {}, which is not set",
                &s[4..]
            )
        })?,
        s => s.to_string(),
    };
    let secret = secret
        .strip_prefix("whsec_")
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .filter(|key| key.len() >= 16)
        .ok_or("secret must be a whsec_ key of at least 16 bytes (base64 after `whsec_`)")?;
    let mut headers = Vec::new();
    if let Some(h) = d.get("headers") {
        let h = h.as_table().ok_or("headers must be a table")?;
        for (k, v) in h {
            let name = HeaderName::try_from(k.as_str())
                .map_err(|_| format!("header name {k:?} is not valid"))?;
            if RESERVED_HEADERS.contains(&name.as_str()) || name.as_str().starts_with("webhook-") {
                return Err(format!(
                    "header {k:?} is set by the gateway (the signature covers the body it sends)"
                ));
            }
            let value = v
                .as_str()
                .and_then(|v| HeaderValue::try_from(v).ok())
                .ok_or_else(|| format!("header {k:?} must be a valid header value"))?;
            headers.push((name, value));
        }
    }
    let allow_private = match d.get("allow_private") {
        None => false,
        Some(v) => v.as_bool().ok_or("allow_private must be true or false")?,
    };
    Ok(Destination {
        name: name.to_string(),
        url,
        secret,
        timeout: Duration::from_millis(number("timeout_ms", 5_000, 1..=600_000)? as u64),
        max_in_flight: number("max_in_flight", 64, 1..=10_000)? as u32,
        rate_per_sec: number("rate_per_sec", 0, 0..=1_000_000)? as u32,
        headers,
        allow_private,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    const KEY: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    #[test]
    fn parses_a_full_destination_and_hides_its_secret() {
        let t = table(&format!(
            r#"[orders]
            url = "https://user:pw@orders.example/hooks?token=abc"
            secret = "{KEY}"
            timeout_ms = 2500
            max_in_flight = 8
            rate_per_sec = 100
            headers = {{ "x-team" = "orders" }}
            "#
        ));
        let d = &parse(&t, |_| None).unwrap()["orders"];
        assert_eq!(d.timeout, Duration::from_millis(2500));
        assert_eq!(
            (d.max_in_flight, d.rate_per_sec, d.allow_private),
            (8, 100, false)
        );
        assert_eq!(d.secret, b"0123456789abcdef0123456789abcdef");
        assert_eq!(d.headers[0].0, "x-team");
        let shown = format!("{d:?}");
        assert!(
            !shown.contains("MDEy") && !shown.contains("pw") && !shown.contains("abc"),
            "{shown}"
        );
        assert_eq!(d.shown_url(), "https://orders.example/hooks");
    }

    #[test]
    fn env_secrets_and_errors_that_say_what_to_fix() {
        let t = table(
            r#"[a]
            url = "http://a.example/"
            secret = "env:A_SECRET""#,
        );
        let env = |k: &str| (k == "A_SECRET").then(|| KEY.to_string());
        assert_eq!(parse(&t, env).unwrap()["a"].secret.len(), 32);
        let e = parse(&t, |_| None).unwrap_err();
        assert!(e.contains("A_SECRET") && e.contains("not set"), "{e}");
        for (bad, expected) in [
            (
                r#"url = "ftp://x/"
                secret = "S""#,
                "http://",
            ),
            (r#"url = "http://x/""#, "secret is required"),
            (
                r#"url = "http://x/"
                secret = "whsec_c2hvcnQ=""#,
                "at least 16 bytes",
            ),
            (
                &format!(
                    r#"url = "http://x/"
                secret = "{KEY}"
                colour = "red""#
                ),
                "unknown setting",
            ),
            (
                &format!(
                    r#"url = "http://x/"
                secret = "{KEY}"
                max_in_flight = 0"#
                ),
                "max_in_flight",
            ),
            (
                &format!(
                    r#"url = "http://x/"
                secret = "{KEY}"
                headers = {{ "Webhook-Id" = "mine" }}"#
                ),
                "set by the gateway",
            ),
            (
                &format!(
                    r#"url = "http://x/"
                secret = "{KEY}"
                headers = {{ "content-type" = "text/plain" }}"#
                ),
                "set by the gateway",
            ),
        ] {
            let t = table(&format!("[d]\n{bad}"));
            let e = parse(&t, |_| None).unwrap_err();
            assert!(e.contains(expected) && !e.contains("c2hvcnQ"), "{bad}: {e}");
        }
        let t = table(&format!(
            "[\"a.b\"]\nurl = \"http://x/\"\nsecret = \"{KEY}\""
        ));
        assert!(parse(&t, |_| None).unwrap_err().contains("name"));
    }
}
