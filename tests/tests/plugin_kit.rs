//! The plugin kit from a user's seat: `plugin new` → `plugin build` → `plugin test` → copy into
//! a running gateway's `PLUGINS_DIR` → its events are routed by the new plugin.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use switchyard_tests::*;

/// Runs the `switchyard` binary with `args`; panics with its output unless it succeeds.
fn switchyard(args: &[&str], cwd: &Path) -> String {
    let out = std::process::Command::new(switchyard_bin())
        .args(args)
        .current_dir(cwd)
        // Reuse the plugins' compiled dependencies, and prove the project's lock needs nothing
        // from the network: the versions it pins are the ones the repository's plugins use.
        .env("CARGO_TARGET_DIR", repo_root().join("plugins/target"))
        .env("CARGO_NET_OFFLINE", "true")
        .output()
        .expect("run switchyard");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "switchyard {args:?} failed:\n{text}");
    text
}

#[tokio::test]
async fn a_new_rust_plugin_builds_passes_its_cases_and_routes_live_events() {
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join("my-router");
    let project_arg = project.to_str().unwrap();
    switchyard(
        &[
            "plugin",
            "new",
            "my-router",
            "--lang",
            "rust",
            "--dir",
            project_arg,
        ],
        work.path(),
    );
    for file in [
        "Cargo.toml",
        "Cargo.lock",
        "src/lib.rs",
        "wit/router.wit",
        "cases.toml",
        "README.md",
    ] {
        assert!(project.join(file).exists(), "{file} not written");
    }
    let lock = std::fs::read_to_string(project.join("Cargo.lock")).unwrap();
    let built = switchyard(&["plugin", "build"], &project);
    assert!(built.contains("built ./my-router.wasm"), "{built}");
    assert_eq!(
        std::fs::read_to_string(project.join("Cargo.lock")).unwrap(),
        lock,
        "the build changed the pinned versions"
    );
    // The code it writes is formatted as `cargo fmt` formats it.
    let fmt = std::process::Command::new("cargo")
        .args(["fmt", "--check"])
        .current_dir(&project)
        .output()
        .expect("cargo fmt");
    assert!(
        fmt.status.success(),
        "{}",
        String::from_utf8_lossy(&fmt.stdout)
    );
    let tested = switchyard(&["plugin", "test", project_arg], work.path());
    assert!(tested.contains("6 passed, 0 failed"), "{tested}");
    // Making a project where one exists is refused.
    let again = std::process::Command::new(switchyard_bin())
        .args(["plugin", "new", "my-router", "--dir", project_arg])
        .output()
        .unwrap();
    assert!(!again.status.success());

    // Deployed into a running gateway: a copy into its plugins directory and a route to it.
    let dir = PluginDir::default_router(0, 0.0);
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start(embedded_config(dir.path(), data.path())).await;
    let c = gw.client();
    let order = serde_json::to_vec(&json!({"total": 2500})).unwrap();
    let put = c
        .admin(
            reqwest::Method::PUT,
            "/context/order/o-1",
            Some(order),
            Some(TEST_ADMIN_TOKEN),
        )
        .await;
    assert_eq!(put.status, 204);
    std::fs::write(
        dir.path().join("switchyard.toml"),
        "default = \"default-router\"\n[routes]\nORDER_CREATED = \"my-router\"\n[config.default-router]\ndelay_ms = 0\nfailure_rate = 0\n[config.my-router]\npriority_threshold = 1000\n",
    )
    .unwrap();
    std::fs::copy(
        project.join("my-router.wasm"),
        dir.path().join("my-router.wasm"),
    )
    .unwrap();
    let t = Instant::now();
    loop {
        let plugins = c.get("/plugins").await.body;
        let routed = plugins["routes"]["ORDER_CREATED"] == "my-router";
        let loaded = plugins["plugins"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["name"] == "my-router");
        if routed && loaded {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "my-router not live: {plugins}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids = [unique("kit-order"), unique("kit-other")];
    let a = c
        .send(&json!({"eventId": ids[0], "type": "ORDER_CREATED", "payload": {"orderId": "o-1"}}))
        .await;
    let b = c
        .send(&json!({"eventId": ids[1], "type": "SHIPMENT_CREATED", "payload": {}}))
        .await;
    assert_eq!((a.status, b.status), (202, 202));
    let records = c.wait_final(&ids, Duration::from_secs(30)).await;
    assert_eq!(records[0]["state"], "ROUTED", "{}", records[0]);
    assert_eq!(records[0]["plugin"]["name"], "my-router");
    assert_eq!(records[0]["decision"]["destination"], "orders");
    assert_eq!(records[0]["decision"]["metadata"]["lane"], "priority");
    // Other types keep their plugin.
    assert_eq!(records[1]["plugin"]["name"], "default-router");
    gw.stop().await.unwrap();
}
