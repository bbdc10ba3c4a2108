//! The plugins directory's manifest, `switchyard.toml`: which plugin routes which event types,
//! and the configuration values granted to each plugin.
//!
//! ```toml
//! default = "default-router"          # plugin for event types not listed below
//!
//! [routes]                            # event type → plugin (file stem of its .wasm)
//! ORDER_CREATED = "default-router"
//! "SHIPMENT_*" = "content-router"     # a trailing `*` matches a prefix
//!
//! [config.default-router]             # values the plugin reads through the `config` import
//! delay_ms = 2000
//! failure_rate = 0.1
//!
//! [destinations.orders]                # where routed events are delivered (read by the gateway)
//! url = "https://orders.internal/hooks"
//! secret = "env:ORDERS_WEBHOOK_SECRET"
//! ```
//! Without a manifest (or without `default`), the default plugin is `default-router`, or the
//! only plugin when there is exactly one.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

/// File name of the manifest inside the plugins directory.
pub const MANIFEST_FILE: &str = "switchyard.toml";

/// Conventional name of the default plugin when the manifest names none.
const CONVENTIONAL_DEFAULT: &str = "default-router";

#[derive(Debug, Clone, Default)]
pub struct Manifest {
    pub default: Option<String>,
    /// Exact event types.
    pub exact: BTreeMap<String, String>,
    /// Prefix patterns (`"SHIPMENT_*"` stored as `"SHIPMENT_"`), longest first.
    pub prefixes: Vec<(String, String)>,
    pub config: BTreeMap<String, Arc<BTreeMap<String, String>>>,
    /// `[destinations]`, as written: the runtime does not read it (it is the embedder's: where
    /// routed events are delivered).
    pub destinations: Arc<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    default: Option<String>,
    #[serde(default)]
    routes: BTreeMap<String, String>,
    #[serde(default)]
    config: BTreeMap<String, BTreeMap<String, toml::Value>>,
    #[serde(default)]
    destinations: toml::Table,
}

impl Manifest {
    /// Parses the manifest text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw: Raw = toml::from_str(text).map_err(|e| e.message().to_string())?;
        let mut m = Manifest {
            default: raw.default,
            destinations: Arc::new(raw.destinations),
            ..Manifest::default()
        };
        for (pattern, plugin) in raw.routes {
            match pattern.strip_suffix('*') {
                Some(prefix) => m.prefixes.push((prefix.to_string(), plugin)),
                None => {
                    m.exact.insert(pattern, plugin);
                }
            }
        }
        m.prefixes
            .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        for (plugin, values) in raw.config {
            let values = values
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        toml::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, v)
                })
                .collect();
            m.config.insert(plugin, Arc::new(values));
        }
        Ok(m)
    }

    /// The plugin `[routes]` names for `event_type` (exact type first, then the longest prefix),
    /// if any.
    pub fn routed_to(&self, event_type: &str) -> Option<&str> {
        self.exact.get(event_type).map(String::as_str).or_else(|| {
            self.prefixes
                .iter()
                .find(|(prefix, _)| event_type.starts_with(prefix.as_str()))
                .map(|(_, p)| p.as_str())
        })
    }

    /// The plugin that routes `event_type`, given the names of the loaded plugins.
    pub fn plugin_for<'a>(&'a self, event_type: &str, loaded: &'a [&'a str]) -> Option<&'a str> {
        self.routed_to(event_type)
            .or_else(|| self.default_plugin(loaded))
    }

    /// The default plugin's name, given the loaded plugins.
    pub fn default_plugin<'a>(&'a self, loaded: &'a [&'a str]) -> Option<&'a str> {
        if let Some(d) = &self.default {
            return Some(d);
        }
        if loaded.contains(&CONVENTIONAL_DEFAULT) {
            return Some(CONVENTIONAL_DEFAULT);
        }
        match loaded {
            [only] => Some(only),
            _ => None,
        }
    }

    /// The configuration granted to `plugin`.
    pub fn config_for(&self, plugin: &str) -> Arc<BTreeMap<String, String>> {
        self.config.get(plugin).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_exact_then_longest_prefix_then_default() {
        let m = Manifest::parse(
            r#"
            default = "fallback"
            [routes]
            ORDER_CREATED = "orders"
            "SHIP*" = "ship"
            "SHIPMENT_*" = "shipments"
            [config.orders]
            delay_ms = 5
            name = "x"
            "#,
        )
        .unwrap();
        let loaded = ["orders", "ship", "shipments", "fallback"];
        assert_eq!(m.plugin_for("ORDER_CREATED", &loaded), Some("orders"));
        assert_eq!(m.plugin_for("SHIPMENT_LOST", &loaded), Some("shipments"));
        assert_eq!(m.plugin_for("SHIPPED", &loaded), Some("ship"));
        assert_eq!(m.plugin_for("OTHER", &loaded), Some("fallback"));
        assert_eq!(
            m.config_for("orders").get("delay_ms").map(String::as_str),
            Some("5")
        );
        assert_eq!(
            m.config_for("orders").get("name").map(String::as_str),
            Some("x")
        );
        assert!(m.config_for("ship").is_empty());
    }

    #[test]
    fn default_without_manifest() {
        let m = Manifest::default();
        assert_eq!(
            m.plugin_for("X", &["a", "default-router"]),
            Some("default-router")
        );
        assert_eq!(m.plugin_for("X", &["only"]), Some("only"));
        assert_eq!(m.plugin_for("X", &["a", "b"]), None);
    }

    #[test]
    fn rejects_unknown_keys() {
        assert!(Manifest::parse("defualt = \"x\"").is_err());
    }
}
