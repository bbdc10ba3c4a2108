//! The API's description against the API: the router, `GET /openapi.json` and the README's
//! endpoint table list the same endpoints, and Schemathesis (an independent tool) fuzzes a
//! running gateway from the description and finds no server error and no answer it does not
//! document.

use std::collections::BTreeSet;

use reqwest::Method;
use switchyard_tests::*;

/// `METHOD /path` of every operation in a description.
fn operations(spec: &serde_json::Value) -> BTreeSet<String> {
    let mut ops = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            ops.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    ops
}

/// `METHOD /path` of every row of the README's API table (query strings dropped).
fn readme_endpoints() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let api = readme
        .split("\n## API\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has an API section");
    api.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(|e| e.split('?').next().unwrap_or(e).to_string())
        .collect()
}

#[tokio::test]
async fn the_router_the_description_and_the_readme_list_the_same_endpoints() {
    let dir = PluginDir::default_router(0, 0.0);
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(embedded_config(dir.path(), data.path())).await;
    let c = gw.client();
    let served = c
        .http
        .get(format!("{}/openapi.json", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let served = served.text().await.unwrap();
    let committed = std::fs::read_to_string(repo_root().join("openapi.json")).unwrap();
    assert_eq!(
        served, committed,
        "GET /openapi.json and the committed openapi.json differ"
    );
    let spec: serde_json::Value = serde_json::from_str(&served).unwrap();
    let ops = operations(&spec);
    assert_eq!(ops.len(), 21, "{ops:?}");
    assert_eq!(
        ops,
        readme_endpoints(),
        "the README's API table and the description differ"
    );

    // Every described operation is routed (a route answers with anything but the fallback's
    // 404 `no such endpoint` or 405), and every other method on a described path is a 405: the
    // router has no method the description lacks on these paths.
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
    ];
    for path in spec["paths"].as_object().unwrap().keys() {
        let concrete = path
            .replace("{eventId}", "no-such-event")
            .replace("{name}", "no-such-plugin")
            .replace("{kind}", "order")
            .replace("{id}", "o-1");
        for method in &methods {
            let a = c.admin(method.clone(), &concrete, None, None).await;
            let described = ops.contains(&format!("{method} {path}"));
            let fallback = a.status == 405
                || (a.status == 404 && a.body["error"]["message"] == "no such endpoint");
            if described {
                assert!(
                    !fallback,
                    "{method} {path} is described but not routed: {}",
                    a.body
                );
            } else {
                assert_eq!(a.status, 405, "{method} {path} is routed but not described");
            }
        }
    }
    // A path the description lacks is not served.
    let a = c
        .admin(Method::GET, "/events/stats/extra", None, None)
        .await;
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    gw.stop().await.unwrap();
}

/// Runs `program` with `args` (and `env`) in `dir`; its combined output, and whether it exited 0.
async fn run(
    program: &std::path::Path,
    args: &[&str],
    env: &[(&str, String)],
    dir: &std::path::Path,
) -> (bool, String) {
    let out = tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(dir)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (scripts/setup.sh installs it)",
                program.display()
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn schemathesis_fuzzes_every_operation_and_finds_no_undocumented_answer() {
    let venv = api_venv();
    let spec = repo_root().join("openapi.json");
    let work = tempfile::tempdir().unwrap();

    // The document itself, checked by an independent validator.
    let (ok, out) = run(
        &venv.join("bin/openapi-spec-validator"),
        &[spec.to_str().unwrap()],
        &[],
        work.path(),
    )
    .await;
    assert!(ok, "openapi-spec-validator: {out}");

    // A gateway on Redis and SecantusDB, no rate or depth limit (so that 429 and 503 cannot
    // occur), and the examples the description names: the event `evt-1001`, the plugin
    // `default-router`.
    let dir = PluginDir::default_router(0, 0.0);
    let mut config = gateway_config(dir.path());
    config.rate_limit_max_requests = 0;
    config.queue_max_depth = 0;
    config.dlq_max_depth = 0;
    config.delivery_max_depth = 0;
    let gw = Gateway::start(config).await;
    let c = gw.client();
    let event = serde_json::json!({"eventId": "evt-1001", "type": "ORDER_CREATED", "payload": {"orderId": "12345"}});
    assert_eq!(c.send(&event).await.status, 202);
    c.wait_final(
        &["evt-1001".to_string()],
        std::time::Duration::from_secs(30),
    )
    .await;

    let components = ["rollout-v1", "rollout-v2"]
        .map(|p| plugin(p).to_string_lossy().into_owned())
        .join(",");
    let log = work.path().join("answers.jsonl");
    let env = [
        (
            "SCHEMATHESIS_HOOKS",
            repo_root()
                .join("tests/api/hooks.py")
                .to_string_lossy()
                .into_owned(),
        ),
        ("SWITCHYARD_SECRET", TEST_SECRET.to_string()),
        ("SWITCHYARD_TOKEN", TEST_ADMIN_TOKEN.to_string()),
        ("SWITCHYARD_COMPONENTS", components),
        ("SWITCHYARD_PLUGIN", "default-router".to_string()),
        ("SWITCHYARD_STATUS_LOG", log.to_string_lossy().into_owned()),
    ];
    let config_file = repo_root().join("tests/api/schemathesis.toml");
    let args = [
        "--no-color",
        "--config-file",
        config_file.to_str().unwrap(),
        "run",
        spec.to_str().unwrap(),
        "--url",
        &gw.url,
        // Valid and invalid inputs; every phase (examples, coverage, fuzzing, stateful).
        "--mode",
        "all",
        "--checks",
        "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance",
        "--max-examples",
        "40",
        "--seed",
        "20261129",
        "--workers",
        "1",
        "--generation-database",
        "none",
    ];
    let (ok, out) = run(&venv.join("bin/schemathesis"), &args, &env, work.path()).await;
    let tail: Vec<&str> = out.lines().rev().take(80).collect();
    let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    assert!(ok, "Schemathesis found problems:\n{tail}");

    // Every operation was called and succeeded (2xx) at least once.
    let spec_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&spec).unwrap()).unwrap();
    let mut statuses: std::collections::BTreeMap<String, BTreeSet<u16>> = Default::default();
    for line in std::fs::read_to_string(&log)
        .expect("the hooks' answer log")
        .lines()
    {
        let a: serde_json::Value = serde_json::from_str(line).unwrap();
        let op = a["op"].as_str().unwrap().to_string();
        if op.split(' ').next() == a["method"].as_str() {
            statuses
                .entry(op)
                .or_default()
                .insert(a["status"].as_u64().unwrap() as u16);
        }
    }
    for op in operations(&spec_json) {
        let seen = statuses.get(&op).cloned().unwrap_or_default();
        assert!(
            seen.iter().any(|s| (200..300).contains(s)),
            "{op}: no 2xx in the run ({seen:?})\n{tail}"
        );
    }
    gw.stop().await.unwrap();
}
