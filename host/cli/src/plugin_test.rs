//! `switchyard plugin test FILE.wasm --cases CASES.toml|.json`: routes each case's event through
//! the plugin, in the gateway's sandbox with the gateway's limits (its configuration: the
//! environment and `SWITCHYARD_CONFIG`), and compares the outcome with the case's expectation.
//!
//! A cases file (TOML shown; JSON has the same shape, with `"cases": [..]`):
//! ```toml
//! [config]                       # the plugin's configuration for every case (optional)
//! region = "eu"
//!
//! [[case]]
//! name = "a named carrier wins"
//! event = { type = "SHIPMENT_CREATED", payload = { carrier = "DHL" } }   # eventId, attempt optional
//! context = { shipment = { "s-1" = { carrier = "UPS" } } }              # live documents (optional)
//! config = { region = "us" }                                             # this case's config (optional)
//! expect = { destination = "carrier:dhl", metadata = { lane = "standard" } }
//!
//! [[case]]
//! name = "nothing to route by"
//! event = { type = "SHIPMENT_CREATED", payload = {} }
//! expect = { error = "permanent" }
//! ```
//! `expect` names a `destination` (the first one), or `destinations` (all, in order; contract
//! 0.2), optionally the `payload` delivered, the `reason` and a `metadata` subset; or an `error`
//! kind (`transient`, `permanent`, `timeout`, `trap`, …) and optionally text its message
//! contains (`errorContains`). `orderingKey` checks a `keyed-router` plugin's key.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context as _, bail};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use switchyard_model::routing::{Decision, RouteRequest};
use switchyard_runtime::registry::LoadedInfo;
use switchyard_runtime::{Context, Limits, Plugins};

use crate::plugin_cmd::single_plugin_host;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    #[serde(default)]
    config: BTreeMap<String, Value>,
    #[serde(alias = "cases")]
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    event: CaseEvent,
    /// kind → id → document.
    #[serde(default)]
    context: BTreeMap<String, BTreeMap<String, Value>>,
    /// This case's configuration, over the file's.
    #[serde(default)]
    config: BTreeMap<String, Value>,
    expect: Expect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CaseEvent {
    event_id: Option<String>,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default = "empty_object")]
    payload: Value,
    correlation_id: Option<String>,
    attempt: Option<u32>,
}

fn empty_object() -> Value {
    json!({})
}

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Expect {
    #[serde(skip_serializing_if = "Option::is_none")]
    destination: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    destinations: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_contains: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ordering_key: Option<String>,
}

/// One case's result.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CaseResult {
    name: String,
    passed: bool,
    duration_ms: f64,
    expected: Expect,
    /// `{decision}` or `{error: {kind, message}}`, plus `orderingKey` when it was checked.
    actual: Value,
    /// What differs, one line each.
    differences: Vec<String>,
}

/// The whole run, as `--json` prints it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    plugin: LoadedInfo,
    passed: usize,
    failed: usize,
    cases: Vec<CaseResult>,
}

/// The live documents of the case being run.
#[derive(Default)]
struct CaseContext(Mutex<BTreeMap<(String, String), String>>);

impl Context for CaseContext {
    fn lookup<'a>(
        &'a self,
        kind: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, String>> {
        let docs = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let hit = docs.get(&(kind.to_string(), id.to_string())).cloned();
        Box::pin(async move { Ok(hit) })
    }
}

/// Reads a cases file, TOML or JSON by its extension.
fn read_cases(path: &Path) -> anyhow::Result<CasesFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let cases: CasesFile = match path.extension().and_then(|e| e.to_str()) {
        Some("json") => serde_json::from_str(&text)
            .with_context(|| format!("{} is not a cases file", path.display()))?,
        _ => toml::from_str(&text)
            .with_context(|| format!("{} is not a cases file", path.display()))?,
    };
    for case in &cases.case {
        let e = &case.expect;
        let routed = e.destination.is_some() || e.destinations.is_some();
        if routed == e.error.is_some() {
            bail!(
                "case {:?}: `expect` names a `destination` (or `destinations`), or an `error` kind, not both",
                case.name
            );
        }
        if !case.event.payload.is_object() {
            bail!(
                "case {:?}: the event's `payload` must be an object",
                case.name
            );
        }
    }
    Ok(cases)
}

/// A configuration value as the manifest gives it to the plugin: text.
fn config_text(config: &BTreeMap<String, Value>) -> anyhow::Result<Vec<(String, String)>> {
    config
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            Value::Number(_) | Value::Bool(_) => Ok((k.clone(), v.to_string())),
            _ => bail!("config value {k:?} must be text, a number or a boolean"),
        })
        .collect()
}

/// Runs every case of `cases` against `file` with `limits`; prints the report (text, or JSON)
/// and answers whether every case passed.
pub async fn run(
    file: &Path,
    cases: &Path,
    limits: Limits,
    json_out: bool,
) -> anyhow::Result<bool> {
    let cases = read_cases(cases)?;
    let context = Arc::new(CaseContext::default());
    // One host per distinct configuration (the manifest grants it), each loaded once.
    let mut hosts: BTreeMap<Vec<(String, String)>, (Plugins, tempfile::TempDir)> = BTreeMap::new();
    let mut plugin = None;
    let mut results = Vec::new();
    for (n, case) in cases.case.into_iter().enumerate() {
        let mut config = cases.config.clone();
        config.extend(case.config.clone());
        let config = config_text(&config)?;
        if !hosts.contains_key(&config) {
            let (host, dir, loaded) =
                single_plugin_host(file, &config, context.clone(), limits.clone()).await?;
            let info = loaded.with_context(|| format!("{} would be rejected", file.display()))?;
            plugin.get_or_insert(info);
            hosts.insert(config.clone(), (host, dir));
        }
        let (host, _) = &hosts[&config];
        *context.0.lock().unwrap_or_else(|p| p.into_inner()) = case
            .context
            .iter()
            .flat_map(|(kind, docs)| {
                docs.iter()
                    .map(move |(id, doc)| ((kind.clone(), id.clone()), doc.to_string()))
            })
            .collect();
        results.push(run_case(host, n, case).await);
    }
    let failed = results.iter().filter(|r| !r.passed).count();
    let Some(mut plugin) = plugin else {
        bail!("the cases file has no case");
    };
    // The file tested, not the scratch copy the host loaded.
    plugin.path = file.to_path_buf();
    let report = Report {
        plugin,
        passed: results.len() - failed,
        failed,
        cases: results,
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    Ok(failed == 0)
}

async fn run_case(host: &Plugins, n: usize, case: Case) -> CaseResult {
    let ev = case.event;
    let request = RouteRequest {
        event_id: ev.event_id.unwrap_or_else(|| format!("case-{}", n + 1)),
        event_type: ev.event_type,
        correlation_id: ev
            .correlation_id
            .unwrap_or_else(|| format!("plugin-test:{}", n + 1)),
        payload: ev.payload.to_string(),
        received_at_ms: switchyard_model::clock::now_ms(),
        attempt: ev.attempt.unwrap_or(1),
    };
    let started = Instant::now();
    let outcome = host.route(&request).await;
    let duration_ms = (started.elapsed().as_secs_f64() * 10_000.0).round() / 10.0;
    let expect = case.expect;
    let mut differences = Vec::new();
    let mut actual = match &outcome.result {
        Ok(d) => {
            compare_decision(&expect, d, &ev.payload, &mut differences);
            json!({ "decision": d })
        }
        Err(e) => {
            match &expect.error {
                Some(kind) if kind == e.kind() => {}
                Some(kind) => differences.push(format!("error: expected {kind}, got {}", e.kind())),
                None => differences.push(format!("expected a decision, got a {} error", e.kind())),
            }
            if let Some(text) = &expect.error_contains
                && !e.to_string().contains(text.as_str())
            {
                differences.push(format!("error message: expected it to contain {text:?}"));
            }
            json!({ "error": { "kind": e.kind(), "message": e.to_string() } })
        }
    };
    if outcome.result.is_ok() && expect.error.is_some() {
        differences.push(format!(
            "expected a {} error, got a decision",
            expect.error.as_deref().unwrap_or_default()
        ));
    }
    if let Some(want) = &expect.ordering_key {
        let got = match host.ordering_key(&request).await {
            Ok(key) => key.map(|(_, k)| k),
            Err(e) => Some(format!("<{} error: {e}>", e.kind())),
        };
        if got.as_deref() != Some(want.as_str()) {
            let got = got.as_ref().map_or("no key".into(), |g| format!("{g:?}"));
            differences.push(format!("orderingKey: expected {want:?}, got {got}"));
        }
        actual["orderingKey"] = json!(got);
    }
    CaseResult {
        name: case.name,
        passed: differences.is_empty(),
        duration_ms,
        expected: expect,
        actual,
        differences,
    }
}

/// What of `expect` the decision `d` does not match (the payload delivered is the event's own
/// unless the plugin transformed it).
fn compare_decision(expect: &Expect, d: &Decision, event_payload: &Value, out: &mut Vec<String>) {
    if let Some(want) = &expect.destination
        && want != &d.destination
    {
        out.push(format!(
            "destination: expected {want:?}, got {:?}",
            d.destination
        ));
    }
    if let Some(want) = &expect.destinations {
        let got: Vec<&str> = d.destinations().collect();
        if want.iter().map(String::as_str).ne(got.iter().copied()) {
            out.push(format!("destinations: expected {want:?}, got {got:?}"));
        }
    }
    if let Some(want) = &expect.payload {
        let got = match &d.payload {
            Some(text) => serde_json::from_str(text).unwrap_or(Value::String(text.clone())),
            None => event_payload.clone(),
        };
        if &got != want {
            out.push(format!("payload: expected {want}, got {got}"));
        }
    }
    if let Some(want) = &expect.reason
        && want != &d.reason
    {
        out.push(format!("reason: expected {want:?}, got {:?}", d.reason));
    }
    for (k, want) in &expect.metadata {
        match d.metadata.get(k) {
            Some(got) if got == want => {}
            Some(got) => out.push(format!("metadata.{k}: expected {want:?}, got {got:?}")),
            None => out.push(format!("metadata.{k}: expected {want:?}, got nothing")),
        }
    }
}

fn print_text(report: &Report) {
    println!(
        "plugin {} ({}), {} case(s)",
        report.plugin.name,
        &report.plugin.version[..12.min(report.plugin.version.len())],
        report.cases.len()
    );
    for r in &report.cases {
        if r.passed {
            println!("ok    {} ({} ms)", r.name, r.duration_ms);
            continue;
        }
        println!("FAIL  {} ({} ms)", r.name, r.duration_ms);
        for d in &r.differences {
            println!("      - {d}");
        }
        let expected = serde_json::to_string(&r.expected).unwrap_or_default();
        println!("      expected: {expected}");
        println!("      actual:   {}", r.actual);
    }
    println!("{} passed, {} failed", report.passed, report.failed);
}
