//! `switchyard plugin check` and `switchyard plugin run`: validate and try a plugin locally.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde_json::Value;

use switchyard_model::routing::RouteRequest;
use switchyard_runtime::manifest::MANIFEST_FILE;
use switchyard_runtime::registry::{LoadedInfo, plugin_name};
use switchyard_runtime::{Limits, NoContext, Plugins, Sandbox, SharedContext, StaticContext};

/// A host with `limits` over a scratch directory holding just `file` (and a manifest granting
/// `config`).
pub(crate) async fn single_plugin_host(
    file: &Path,
    config: &[(String, String)],
    context: SharedContext,
    limits: Limits,
) -> anyhow::Result<(Plugins, tempfile::TempDir, anyhow::Result<LoadedInfo>)> {
    let dir = tempfile::tempdir()?;
    let name = plugin_name(file)
        .ok_or_else(|| anyhow::anyhow!("{} is not a .wasm file", file.display()))?;
    let target = dir.path().join(format!("{name}.wasm"));
    std::fs::copy(file, &target).with_context(|| format!("cannot read {}", file.display()))?;
    let mut manifest = String::new();
    if !config.is_empty() {
        manifest.push_str(&format!("[config.{}]\n", toml_key(&name)));
        for (k, v) in config {
            manifest.push_str(&format!("{} = {}\n", toml_key(k), toml_string(v)));
        }
    }
    std::fs::write(dir.path().join(MANIFEST_FILE), manifest)?;
    let host = Plugins::new(
        Sandbox::new(limits)?,
        Some(dir.path().to_path_buf()),
        context,
    );
    host.reload_manifest().await;
    let loaded = host.load_file(&target).await.map_err(anyhow::Error::from);
    Ok((host, dir, loaded))
}

/// The default limits, with a small instance pool: for one call at a time.
fn one_off_limits() -> Limits {
    Limits {
        max_concurrent_calls: 4,
        ..Limits::default()
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn toml_key(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        s.to_string()
    } else {
        toml_string(s)
    }
}

/// `plugin check FILE`: compiles, type-checks and canary-calls the file; prints its version id,
/// imports and exports. Errors (non-zero exit) say why the host would refuse it.
pub async fn check(file: &Path) -> anyhow::Result<()> {
    let (host, _dir, loaded) =
        single_plugin_host(file, &[], Arc::new(NoContext), one_off_limits()).await?;
    let info = loaded.with_context(|| format!("{} would be rejected", file.display()))?;
    let bytes = std::fs::read(file)?;
    let (imports, exports) = host.sandbox().describe(&bytes)?;
    println!("ok: {} is a valid switchyard:router plugin", file.display());
    println!("name:    {}", info.name);
    println!("version: {}", info.version);
    println!("size:    {} bytes", info.size_bytes);
    println!("exports: {}", exports.join(", "));
    println!("imports: {}", imports.join(", "));
    Ok(())
}

/// An event file: the body a producer would POST, plus optional delivery fields.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventFile {
    event_id: String,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    payload: Value,
    correlation_id: Option<String>,
    attempt: Option<u32>,
}

/// `plugin run FILE --event E.json [--context KIND[:ID]=DOC.json]... [--config K=V]...`:
/// one routing call; prints the decision (exit 0) or the error (exit 1) as JSON.
pub async fn run(
    file: &Path,
    event: &Path,
    context: &[String],
    config: &[String],
) -> anyhow::Result<bool> {
    let text = std::fs::read_to_string(event)
        .with_context(|| format!("cannot read {}", event.display()))?;
    let ev: EventFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid event", event.display()))?;
    if !ev.payload.is_object() {
        bail!("the event's `payload` must be a JSON object");
    }
    let mut docs = BTreeMap::new();
    for spec in context {
        let (key, path) = spec
            .split_once('=')
            .context("--context takes KIND[:ID]=FILE.json")?;
        let (kind, id) = key.split_once(':').unwrap_or((key, "*"));
        let doc = std::fs::read_to_string(PathBuf::from(path))
            .with_context(|| format!("cannot read {path}"))?;
        serde_json::from_str::<Value>(&doc).with_context(|| format!("{path} is not JSON"))?;
        docs.insert((kind.to_string(), id.to_string()), doc);
    }
    let config: Vec<(String, String)> = config
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .context("--config takes KEY=VALUE")
        })
        .collect::<anyhow::Result<_>>()?;
    let (host, _dir, loaded) = single_plugin_host(
        file,
        &config,
        Arc::new(StaticContext(docs)),
        one_off_limits(),
    )
    .await?;
    let info = loaded.with_context(|| format!("{} would be rejected", file.display()))?;
    let request = RouteRequest {
        event_id: ev.event_id,
        event_type: ev.event_type,
        correlation_id: ev
            .correlation_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        payload: ev.payload.to_string(),
        received_at_ms: switchyard_model::clock::now_ms(),
        attempt: ev.attempt.unwrap_or(1),
    };
    let ordering_key = match host.ordering_key(&request).await {
        Ok(key) => serde_json::json!(key.map(|(_, k)| k)),
        Err(e) => serde_json::json!({ "error": { "kind": e.kind(), "message": e.to_string() } }),
    };
    let started = std::time::Instant::now();
    let outcome = host.route(&request).await;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (ok, body) = match outcome.result {
        Ok(decision) => (true, serde_json::json!({ "decision": decision })),
        Err(e) => (
            false,
            serde_json::json!({ "error": { "kind": e.kind(), "message": e.to_string(), "retryable": e.is_retryable() } }),
        ),
    };
    let mut body = body;
    body["plugin"] = serde_json::json!({ "name": info.name, "version": info.version });
    body["elapsedMs"] = serde_json::json!((elapsed_ms * 10.0).round() / 10.0);
    if host.is_keyed(&request.event_type) {
        body["orderingKey"] = ordering_key;
    }
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(ok)
}
