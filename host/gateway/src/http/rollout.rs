//! Plugin rollout endpoints: status, staging a candidate, promotion, rollback, dry runs and
//! what-if replays, all behind the admin token.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::AppState;
use super::auth::RequireAdmin;
use super::error::ApiError;
use super::extract::{ApiPath, ComponentBody, LimitedBody, json_body};
use switchyard_model::clock::now_ms;
use switchyard_model::event::IncomingEvent;
use switchyard_model::record::{EventState, ScanFilter};
use switchyard_model::routing::{PluginId, RouteRequest};
use switchyard_runtime::registry::{
    CANDIDATE_SUFFIX, LoadedInfo, PluginStatus, Resolved, RolloutError, Transition, Which,
};
use switchyard_runtime::rollout::Answer;
use switchyard_runtime::version::short_version;
use switchyard_runtime::{SharedContext, StaticContext};

/// What-if replays examine at most this many events per request.
const MAX_WHAT_IF: usize = 5000;
/// Dry runs of a what-if replay in flight at once (each also waits for a side slot), so that
/// shadow comparisons keep most of the side slots.
const WHAT_IF_PARALLEL: usize = 16;
/// A what-if replay answers with what it has replayed after this long.
const WHAT_IF_DEADLINE: std::time::Duration = std::time::Duration::from_secs(120);
/// Dead-letter pages (of 500) a what-if replay reads at most.
const MAX_DLQ_PAGES: usize = 200;

fn rollout_error(e: RolloutError) -> ApiError {
    let status = match &e {
        RolloutError::NoSuchPlugin(_) | RolloutError::NoSuchVersion(..) => StatusCode::NOT_FOUND,
        RolloutError::NoCandidate(_) | RolloutError::NoPrevious(_) | RolloutError::Changed(..) => {
            StatusCode::CONFLICT
        }
    };
    let code = match &e {
        RolloutError::NoSuchPlugin(_) => "no_such_plugin",
        RolloutError::NoSuchVersion(..) => "no_such_version",
        RolloutError::NoCandidate(_) => "no_candidate",
        RolloutError::NoPrevious(_) => "no_previous_version",
        RolloutError::Changed(..) => "changed",
    };
    ApiError::new(status, code, e.to_string())
}

fn valid_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.ends_with(CANDIDATE_SUFFIX)
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_name",
            "a plugin name is 1 to 64 characters of [A-Za-z0-9_-]",
        ))
    }
}

/// `GET /plugins/{name}`: versions, shadow comparison (with samples), watch and history of one
/// plugin (admin token).
#[utoipa::path(get, path = "/plugins/{name}", operation_id = "getPlugin", tag = "plugins",
    params(("name" = String, Path, description = "The plugin (its file stem).", example = "default-router")),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The plugin's versions, shadow comparison, watch and history.", body = PluginStatus),
        super::openapi::PluginReadErrors,
    ))]
pub async fn status(
    _: RequireAdmin,
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<PluginStatus>, ApiError> {
    s.plugins
        .status()
        .into_iter()
        .find(|p| p.name == name)
        .map(Json)
        .ok_or_else(|| rollout_error(RolloutError::NoSuchPlugin(name)))
}

/// `PUT /plugins/{name}/candidate`: checks a component (the body) and, if the host accepts it,
/// stages it as `<name>.next.wasm`. A refused upload leaves the current candidate alone.
#[utoipa::path(put, path = "/plugins/{name}/candidate", operation_id = "stageCandidate", tag = "plugins",
    params(("name" = String, Path, description = "The plugin (its file stem).", example = "default-router")),
    request_body(content = super::openapi::Component, content_type = "application/wasm"),
    security(("adminToken" = [])),
    responses(
        (status = 201, description = "Staged: it shadows the active version from now on.", body = LoadedInfo),
        super::openapi::StageErrors,
    ))]
pub async fn stage(
    _: RequireAdmin,
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ComponentBody(body): ComponentBody,
) -> Result<(StatusCode, Json<LoadedInfo>), ApiError> {
    valid_name(&name)?;
    let info = s.plugins.stage_candidate(&name, body.to_vec()).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// `DELETE /plugins/{name}/candidate`'s answer.
#[derive(Serialize, ToSchema)]
pub struct Withdrawn {
    plugin: String,
    /// The version withdrawn.
    withdrawn: String,
}

/// `DELETE /plugins/{name}/candidate`: stops shadowing and removes `<name>.next.wasm`.
#[utoipa::path(delete, path = "/plugins/{name}/candidate", operation_id = "withdrawCandidate", tag = "plugins",
    params(("name" = String, Path, description = "The plugin (its file stem).", example = "default-router")),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "Withdrawn.", body = Withdrawn),
        super::openapi::PluginErrors,
    ))]
pub async fn withdraw(
    _: RequireAdmin,
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Withdrawn>, ApiError> {
    valid_name(&name)?;
    let version = s
        .plugins
        .withdraw_candidate(&name, "admin call", true)
        .await
        .ok_or_else(|| rollout_error(RolloutError::NoCandidate(name.clone())))?;
    Ok(Json(Withdrawn {
        plugin: name,
        withdrawn: version,
    }))
}

/// `POST /plugins/{name}/promote`.
#[utoipa::path(post, path = "/plugins/{name}/promote", operation_id = "promoteCandidate", tag = "plugins",
    params(("name" = String, Path, description = "The plugin (its file stem).", example = "default-router")),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The candidate is active; the version it replaced stays warm as the previous one.", body = Transition),
        super::openapi::PluginErrors,
    ))]
pub async fn promote(
    _: RequireAdmin,
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Transition>, ApiError> {
    let t = s.plugins.promote(&name).await.map_err(rollout_error)?;
    Ok(Json(t))
}

/// `POST /plugins/{name}/rollback`.
#[utoipa::path(post, path = "/plugins/{name}/rollback", operation_id = "rollbackPlugin", tag = "plugins",
    params(("name" = String, Path, description = "The plugin (its file stem).", example = "default-router")),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The previous version is active again.", body = Transition),
        super::openapi::PluginErrors,
    ))]
pub async fn rollback(
    _: RequireAdmin,
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Transition>, ApiError> {
    let t = s.plugins.rollback(&name).await.map_err(rollout_error)?;
    Ok(Json(t))
}

/// A dry run: which version, the event, and the live state it sees.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"version": "active", "event": {"type": "ORDER_CREATED", "payload": {"orderId": "12345"}}}))]
pub struct DryRunBody {
    /// `active` (default), `candidate`, `previous`, or a version id (a prefix of it).
    version: Option<String>,
    /// The event as a producer would POST it (`eventId` optional; `attempt` and `receivedAtMs`
    /// may be set too).
    #[schema(value_type = Object)]
    event: Value,
    /// `{ "order": { "<id>": {..} }, "shipment": {..} }`: the only live state the call sees
    /// (absent: the live state store).
    #[schema(value_type = Option<BTreeMap<String, BTreeMap<String, Object>>>)]
    context: Option<BTreeMap<String, BTreeMap<String, Value>>>,
}

/// A dry run's answer.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DryRunAnswer {
    plugin: PluginId,
    /// `active`, `candidate` or `previous`.
    role: &'static str,
    event_id: String,
    duration_ms: u64,
    result: Answer,
    /// The ordering key of a `keyed-router` plugin (a string; `null`: none), or
    /// `{errorKind, error}`.
    ordering_key: Value,
}

/// `POST /plugins/{name}/dry-run`: the decision of a chosen version for one event, with no
/// effect on any event, queue or store.
#[utoipa::path(post, path = "/plugins/{name}/dry-run", operation_id = "dryRun", tag = "plugins",
    params(("name" = String, Path, description = "The plugin (its file stem).", example = "default-router")),
    request_body(content = DryRunBody, content_type = "application/json"),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The decision or the error of that version for this event.", body = DryRunAnswer),
        super::openapi::DryRunErrors,
    ))]
pub async fn dry_run(
    _: RequireAdmin,
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
    LimitedBody(body): LimitedBody,
) -> Result<Json<DryRunAnswer>, ApiError> {
    let body: DryRunBody = json_body(&body)?;
    let version = s
        .plugins
        .resolve(&name, &Which::parse(body.version.as_deref()))
        .map_err(rollout_error)?;
    let mut event = body.event;
    let Some(obj) = event.as_object_mut() else {
        return Err(ApiError::bad_request(
            "invalid_event",
            "`event` must be a JSON object",
        ));
    };
    let event_id = format!("dry-run-{}", uuid::Uuid::new_v4().simple());
    obj.entry("eventId").or_insert_with(|| json!(event_id));
    obj.entry("payload").or_insert_with(|| json!({}));
    let attempt = match obj.get("attempt") {
        None => 1,
        Some(a) => a
            .as_u64()
            .and_then(|a| u32::try_from(a).ok())
            .filter(|a| *a >= 1)
            .ok_or_else(|| {
                ApiError::bad_request("invalid_event", "`attempt` must be a positive integer")
            })?,
    };
    let received_at_ms = obj
        .get("receivedAtMs")
        .and_then(Value::as_u64)
        .unwrap_or_else(now_ms);
    let incoming = IncomingEvent::parse(event.to_string().as_bytes())
        .map_err(|e| ApiError::bad_request("invalid_event", e.to_string()))?;
    let request = RouteRequest {
        correlation_id: format!("dry-run:{}", incoming.event_id),
        event_id: incoming.event_id,
        event_type: incoming.event_type,
        payload: incoming.payload,
        received_at_ms,
        attempt,
    };
    let context: Option<SharedContext> = body.context.map(|kinds| {
        let mut docs = BTreeMap::new();
        for (kind, ids) in kinds {
            for (id, doc) in ids {
                docs.insert((kind.clone(), id), doc.to_string());
            }
        }
        Arc::new(StaticContext(docs)) as SharedContext
    });
    let (answer, duration_ms) = s.plugins.dry_run(&version, &request, context).await;
    let ordering_key = match s.plugins.dry_run_key(&version, &request).await {
        Ok(k) => json!(k),
        Err(e) => json!({ "errorKind": e.kind(), "error": e.to_string() }),
    };
    tracing::info!(plugin = %name, version = short_version(&version.id().version),
        event_id = %request.event_id, "dry run");
    Ok(Json(DryRunAnswer {
        plugin: version.id(),
        role: version.role,
        event_id: request.event_id,
        duration_ms,
        result: answer,
        ordering_key,
    }))
}

/// A what-if replay: which version, and which past events.
#[derive(Deserialize, Default, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WhatIfBody {
    /// `candidate` (default), `active`, `previous`, or a version id (a prefix of it).
    version: Option<String>,
    #[serde(default)]
    filter: ScanFilter,
    /// `events` (the state store; default) or `dlq` (the dead-letter queue).
    #[schema(pattern = "^(events|dlq)$")]
    source: Option<String>,
    /// Events examined, 1 to 5000 (default 200; outside the range, the nearest bound).
    limit: Option<usize>,
    /// Differences listed in the answer, at most 1000 (default 50; all are counted).
    samples: Option<usize>,
}

/// How the chosen version's decisions differ from what happened.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WhatIfReport {
    plugin: PluginId,
    role: &'static str,
    /// Events read.
    examined: usize,
    /// Of them, events whose type another plugin routes now (not replayed).
    other_plugin: usize,
    replayed: usize,
    same: u64,
    changed: u64,
    /// Changes by kind: `decisionChanged`, `nowFails`, `nowRouted`, `errorChanged`.
    changes: BTreeMap<&'static str, u64>,
    diffs: Vec<WhatIfDiff>,
    /// False when the deadline cut the replay short (the report covers the oldest events).
    complete: bool,
}

/// One event whose outcome would change.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WhatIfDiff {
    event_id: String,
    #[serde(rename = "type")]
    event_type: String,
    state: &'static str,
    change: &'static str,
    before: Answer,
    after: Answer,
}

/// One event to replay and what happened to it.
struct Past {
    request: RouteRequest,
    state: &'static str,
    happened: Answer,
}

/// `POST /plugins/{name}/what-if`: replays a slice of stored events (those its type sends to
/// this plugin now) through a chosen version as dry runs and reports how the decisions differ
/// from what happened. Lookups read today's live state.
#[utoipa::path(post, path = "/plugins/{name}/what-if", operation_id = "whatIf", tag = "plugins",
    params(("name" = String, Path, description = "The plugin (its file stem).", example = "default-router")),
    request_body(content = WhatIfBody, content_type = "application/json",
        example = json!({"version": "active", "limit": 10})),
    security(("adminToken" = [])),
    responses(
        (status = 200, description = "The report.", body = WhatIfReport),
        super::openapi::WhatIfErrors,
    ))]
pub async fn what_if(
    _: RequireAdmin,
    State(s): State<AppState>,
    ApiPath(name): ApiPath<String>,
    LimitedBody(body): LimitedBody,
) -> Result<Json<WhatIfReport>, ApiError> {
    let body: WhatIfBody = json_body(&body)?;
    let version = s
        .plugins
        .resolve(
            &name,
            &Which::parse(Some(body.version.as_deref().unwrap_or("candidate"))),
        )
        .map_err(rollout_error)?;
    let limit = body.limit.unwrap_or(200).clamp(1, MAX_WHAT_IF);
    let samples = body.samples.unwrap_or(50).min(1000);
    let past = match body.source.as_deref().unwrap_or("events") {
        "events" => from_events(&s, &body.filter, limit).await?,
        "dlq" => from_dlq(&s, &body.filter, limit).await?,
        other => {
            return Err(ApiError::bad_request(
                "invalid_source",
                format!("source must be `events` or `dlq`, not {other:?}"),
            ));
        }
    };
    let examined = past.len();
    let (past, other_plugin): (Vec<Past>, Vec<Past>) = past
        .into_iter()
        .partition(|p| s.plugins.plugin_for(&p.request.event_type).as_deref() == Some(&name));
    let planned = past.len();
    let results: Vec<(Past, Answer)> = futures::stream::iter(past)
        .map(|p| {
            let (plugins, version) = (s.plugins.clone(), version.clone());
            async move {
                let (answer, _) = plugins.dry_run(&version, &p.request, None).await;
                (p, answer)
            }
        })
        .buffered(WHAT_IF_PARALLEL)
        .take_until(tokio::time::sleep(WHAT_IF_DEADLINE))
        .collect()
        .await;
    let mut report = report(&version, examined, other_plugin.len(), results, samples);
    // Past the deadline the answer covers the events replayed so far, oldest first.
    report.complete = report.replayed == planned;
    Ok(Json(report))
}

fn report(
    version: &Resolved,
    examined: usize,
    other_plugin: usize,
    results: Vec<(Past, Answer)>,
    samples: usize,
) -> WhatIfReport {
    let mut changes: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut diffs = Vec::new();
    let replayed = results.len();
    for (past, now) in results {
        let change = match (&past.happened.decision, &now.decision) {
            _ if past.happened.same_effect(&now) => continue,
            (Some(_), Some(_)) => "decisionChanged",
            (Some(_), None) => "nowFails",
            (None, Some(_)) => "nowRouted",
            (None, None) => "errorChanged",
        };
        *changes.entry(change).or_default() += 1;
        if diffs.len() < samples {
            diffs.push(WhatIfDiff {
                event_id: past.request.event_id,
                event_type: past.request.event_type,
                state: past.state,
                change,
                before: past.happened,
                after: now,
            });
        }
    }
    let changed: u64 = changes.values().sum();
    WhatIfReport {
        plugin: version.id(),
        role: version.role,
        examined,
        other_plugin,
        replayed,
        same: replayed as u64 - changed,
        changed,
        changes,
        diffs,
        complete: true,
    }
}

async fn from_events(
    s: &AppState,
    filter: &ScanFilter,
    limit: usize,
) -> Result<Vec<Past>, ApiError> {
    if filter.state == Some(EventState::RoutingPending) {
        return Err(ApiError::bad_request(
            "invalid_filter",
            "state must be ROUTED or FAILED: a pending event has no outcome to compare with",
        ));
    }
    let events = s.state.scan(filter, limit).await?;
    Ok(events
        .into_iter()
        .map(|e| {
            let r = e.record;
            let happened = match (&r.state, &r.decision) {
                (EventState::Routed, Some(d)) => Answer::of(&Ok(d.clone())),
                _ => Answer {
                    decision: None,
                    error_kind: r.history.last().and_then(|a| a.error_kind.clone()),
                    error: r.error.clone(),
                },
            };
            Past {
                request: RouteRequest {
                    correlation_id: format!("what-if:{}", r.correlation_id),
                    event_id: r.event_id,
                    event_type: r.event_type,
                    payload: e.payload,
                    received_at_ms: r.received_at_ms,
                    // The attempt that produced the outcome, so that a plugin that depends on
                    // it answers as it did then.
                    attempt: r.attempts.max(1),
                },
                state: r.state.as_str(),
                happened,
            }
        })
        .collect())
}

async fn from_dlq(s: &AppState, filter: &ScanFilter, limit: usize) -> Result<Vec<Past>, ApiError> {
    let mut found = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_DLQ_PAGES {
        let page = s.queue.dead_letters(cursor.as_deref(), 500).await?;
        let last = page.last().map(|l| l.id.clone());
        let full = page.len() == 500;
        for l in page {
            let j = &l.job;
            if !filter.matches_event(&j.event_type, j.received_at_ms) || found.len() == limit {
                continue;
            }
            let mut request = j.route_request();
            request.correlation_id = format!("what-if:{}", j.correlation_id);
            request.attempt = request.attempt.max(1);
            found.push(Past {
                request,
                state: EventState::Failed.as_str(),
                happened: Answer {
                    decision: None,
                    error_kind: Some(l.error_kind.clone()),
                    error: Some(l.error.clone()),
                },
            });
        }
        if !full || found.len() == limit {
            break;
        }
        cursor = last;
    }
    Ok(found)
}
