//! The API's OpenAPI 3.1 description, generated from the code: each handler's
//! `#[utoipa::path]` (registered with the router by the same `routes!` call, so no route escapes
//! it), the types the handlers answer with, the reusable error answers below and the security
//! schemes. `GET /openapi.json` serves it; `openapi.json` at the repository's root is a copy that
//! a test holds equal to it (`switchyard openapi > openapi.json` refreshes it).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{Modify, OpenApi, ToResponse, ToSchema};

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    pub error: ErrorDetail,
    /// The request's correlation id, where one was established (also in `x-correlation-id`).
    pub correlation_id: Option<String>,
}

/// What went wrong: a stable code to branch on and a message to show.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// E.g. `invalid_signature`, `invalid_event`, `queue_full`, `not_found`.
    pub code: String,
    pub message: String,
}

/// An error answer as a reusable response: `$name`, described by `$text`.
macro_rules! error_responses {
    ($($(#[$attr:meta])* $name:ident = $text:literal;)*) => {$(
        #[doc = $text]
        #[derive(ToResponse)]
        #[response(description = $text)]
        $(#[$attr])*
        pub struct $name(#[allow(dead_code)] ErrorBody);
    )*};
}

error_responses! {
    BadRequest = "The request is malformed: the code says which part (`invalid_body`, `invalid_query`, `invalid_path`, `invalid_event`, `invalid_header`, …).";
    Unauthorized = "No valid credentials: a missing or wrong admin token, or (ingestion) a missing, stale or wrong signature.";
    NotFound = "No such resource.";
    Conflict = "The plugin is not in a state that allows this (no candidate, no previous version, same as active, refused).";
    RequestTimeout = "The body did not arrive within `BODY_TIMEOUT_MS`.";
    PayloadTooLarge = "The body exceeds `BODY_LIMIT_BYTES` (a component: 32 MiB).";
    UnsupportedMediaType = "`Content-Type` is not `application/json`.";
    Unprocessable = "The component was refused: not a component, unknown imports, wrong interface, or its canary call failed.";
    #[response(headers(("retry-after" = u64, description = "Seconds to wait before retrying.")))]
    TooManyRequests = "The client sent more than `RATE_LIMIT_MAX_REQUESTS` in the window.";
    Internal = "The gateway could not store the component (its log says why).";
    #[response(headers(("retry-after" = u64, description = "Seconds to wait before retrying.")))]
    Unavailable = "A backend did not answer in time, or the queue, the dead-letter queue or the deliveries backlog is full (`queue_full`, `dlq_full`, `delivery_backlog_full`, `unavailable`): nothing was changed; retry later.";
}

/// The error answers of an operation, as references to the shared responses above, by status.
macro_rules! error_sets {
    ($($(#[$doc:meta])* $name:ident = [$($status:literal $response:ident),+];)*) => {$(
        $(#[$doc])*
        pub struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::response::Response>> {
                [$(($status.to_string(), RefOr::Ref(Ref::from_response_name(stringify!($response))))),+]
                    .into_iter()
                    .collect()
            }
        }
    )*};
}

error_sets! {
    /// `POST /events`.
    IngestErrors = [400 BadRequest, 401 Unauthorized, 408 RequestTimeout, 413 PayloadTooLarge,
        415 UnsupportedMediaType, 429 TooManyRequests, 503 Unavailable];
    /// An admin read without parameters.
    ReadErrors = [401 Unauthorized, 503 Unavailable];
    /// `GET /events/{eventId}`.
    EventErrors = [400 BadRequest, 401 Unauthorized, 404 NotFound, 503 Unavailable];
    /// A page of dead letters.
    PageErrors = [400 BadRequest, 401 Unauthorized, 503 Unavailable];
    /// An admin call with a JSON body.
    BodyErrors = [400 BadRequest, 401 Unauthorized, 408 RequestTimeout, 413 PayloadTooLarge,
        503 Unavailable];
    /// `PUT /context/{kind}/{id}`.
    ContextErrors = [400 BadRequest, 401 Unauthorized, 404 NotFound, 408 RequestTimeout,
        413 PayloadTooLarge, 503 Unavailable];
    /// A read of one plugin.
    PluginReadErrors = [400 BadRequest, 401 Unauthorized, 404 NotFound];
    /// A change of a plugin's versions.
    PluginErrors = [400 BadRequest, 401 Unauthorized, 404 NotFound, 409 Conflict];
    /// `PUT /plugins/{name}/candidate`.
    StageErrors = [400 BadRequest, 401 Unauthorized, 404 NotFound, 408 RequestTimeout,
        409 Conflict, 413 PayloadTooLarge, 422 Unprocessable, 500 Internal];
    /// `POST /plugins/{name}/dry-run`.
    DryRunErrors = [400 BadRequest, 401 Unauthorized, 404 NotFound, 408 RequestTimeout,
        409 Conflict, 413 PayloadTooLarge];
    /// `POST /plugins/{name}/what-if`.
    WhatIfErrors = [400 BadRequest, 401 Unauthorized, 404 NotFound, 408 RequestTimeout,
        409 Conflict, 413 PayloadTooLarge, 503 Unavailable];
}

/// 1 to 128 characters, no control character, not only white space (event ids, types, keys:
/// `switchyard_model::event::is_printable_id`).
#[derive(Debug)]
pub struct PrintableId;

impl utoipa::PartialSchema for PrintableId {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(128))
            .pattern(Some(
                r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$",
            ))
            .description(Some(
                "1 to 128 characters, no control character, not only white space.",
            ))
            .into()
    }
}

impl ToSchema for PrintableId {}

/// An event as a producer POSTs it. Other top-level fields are accepted and ignored.
#[derive(Debug, ToSchema)]
#[schema(example = json!({"eventId": "evt-1001", "type": "ORDER_CREATED", "payload": {"orderId": "12345"}}))]
#[allow(dead_code)]
pub struct EventSubmission {
    /// Unique per event: the key of exactly-once processing.
    #[schema(rename = "eventId")]
    event_id: PrintableId,
    /// The event type; it chooses the plugin (the manifest's `[routes]`).
    #[schema(rename = "type")]
    event_type: PrintableId,
    /// Any JSON object; the plugin reads it.
    #[schema(value_type = Object)]
    payload: serde_json::Map<String, serde_json::Value>,
    /// Events with the same key share a queue partition and keep their order.
    #[schema(rename = "partitionKey")]
    partition_key: Option<PrintableId>,
}

/// A WebAssembly component (the bytes of a `.wasm` file).
#[derive(Debug, ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct Component(Vec<u8>);

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchyard",
        description = "Event gateway with hot-swappable WebAssembly routing: signed ingestion, durable queueing, routing by plugins, delivery to destinations, and the operator API.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&Security),
    components(schemas(ErrorBody), responses(
        BadRequest, Unauthorized, NotFound, Conflict, RequestTimeout, PayloadTooLarge,
        UnsupportedMediaType, Unprocessable, TooManyRequests, Internal, Unavailable
    )),
    tags(
        (name = "ingestion", description = "Producers send events."),
        (name = "events", description = "An event's state, statistics, and the dead-letter queue."),
        (name = "deliveries", description = "Destinations and the deliveries dead-letter queue."),
        (name = "plugins", description = "Routing plugins: versions, candidates, promotion, rollback, dry runs."),
        (name = "context", description = "Live order / shipment documents that plugins look up."),
        (name = "operations", description = "Health, readiness, metrics and this description."),
    )
)]
struct ApiDoc;

/// The security schemes: the admin token, and the two ways to sign an event.
struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "adminToken",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("`Authorization: Bearer <ADMIN_TOKEN>`."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "hmacSignature",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-hmac-signature",
                "Hex HMAC-SHA256 of the exact body bytes under `HMAC_SECRET` (an optional `sha256=` prefix is accepted). Refused when `SIGNATURE_REQUIRE_TIMESTAMP` is set.",
            ))),
        );
        components.add_security_scheme(
            "standardWebhooks",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "webhook-signature",
                "Standard Webhooks: `webhook-id` (message id), `webhook-timestamp` (Unix seconds, within `SIGNATURE_TOLERANCE_SECS`) and `webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>`. A message id seen before with another body is refused.",
            ))),
        );
    }
}

/// The whole description.
pub fn spec() -> utoipa::openapi::OpenApi {
    let (_, api) = super::api_routes(ApiDoc::openapi(), None).split_for_parts();
    api
}

static SPEC_JSON: LazyLock<String> = LazyLock::new(|| {
    spec()
        .to_pretty_json()
        .expect("the OpenAPI description serializes")
});

/// The description as served and committed: pretty JSON, with a final newline.
pub fn spec_json() -> String {
    format!("{}\n", *SPEC_JSON)
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json", operation_id = "openapi",
    tag = "operations",
    responses((status = 200, description = "This description (OpenAPI 3.1).", body = Object))
)]
pub async fn openapi_json() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], spec_json())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    #[test]
    fn the_committed_copy_is_the_description_the_code_generates() {
        let committed = include_str!("../../../../openapi.json");
        assert!(
            committed == super::spec_json(),
            "openapi.json differs from the code: run `cargo run -- openapi > openapi.json`"
        );
    }

    #[test]
    fn every_operation_has_an_id_a_success_and_no_catch_all_answer() {
        let spec: Value = serde_json::from_str(&super::spec_json()).unwrap();
        let mut ids = BTreeSet::new();
        let mut operations = 0;
        for (path, item) in spec["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                operations += 1;
                let what = format!("{method} {path}");
                let id = op["operationId"].as_str().expect(&what);
                assert!(
                    ids.insert(id.to_string()),
                    "{what}: operationId {id} used twice"
                );
                let codes: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
                assert!(
                    !codes.iter().any(|c| *c == "default"),
                    "{what}: a default response"
                );
                assert!(codes.iter().any(|c| c.starts_with('2')), "{what}: no 2xx");
                // Every error answer is the one JSON error body.
                for (code, answer) in op["responses"].as_object().unwrap() {
                    if code.starts_with('4') || code.starts_with('5') {
                        let r = answer["$ref"].as_str().unwrap_or_default();
                        let shared = r.starts_with("#/components/responses/");
                        assert!(
                            shared || path == "/ready",
                            "{what} {code}: not a shared error"
                        );
                    }
                }
            }
        }
        assert_eq!(operations, 21);
    }
}
