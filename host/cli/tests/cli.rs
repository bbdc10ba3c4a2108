//! The `switchyard plugin` commands on the plugins built from `plugins/`: `check`, `run`, and
//! `test` (a cases file, in the gateway's sandbox with the limits of the gateway's configuration).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn dist(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let p = root.join("plugins/dist").join(name);
    assert!(
        p.exists(),
        "{} is not built: run scripts/build-plugins.sh",
        p.display()
    );
    p
}

fn switchyard(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .expect("run switchyard");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn check_accepts_a_plugin_and_prints_its_version() {
    let file = dist("default-router.wasm");
    let (ok, stdout, _) = switchyard(&["plugin", "check", file.to_str().unwrap()]);
    assert!(ok, "{stdout}");
    use sha2::Digest;
    let version = hex::encode(sha2::Sha256::digest(std::fs::read(&file).unwrap()));
    assert!(stdout.contains(&format!("version: {version}")), "{stdout}");
    assert!(stdout.contains("exports: route"), "{stdout}");
    assert!(
        stdout.contains("switchyard:router/context@0.1.0"),
        "{stdout}"
    );
}

#[test]
fn check_rejects_bad_files_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let truncated = dir.path().join("truncated.wasm");
    let bytes = std::fs::read(dist("default-router.wasm")).unwrap();
    std::fs::write(&truncated, &bytes[..1000]).unwrap();
    let (ok, _, stderr) = switchyard(&["plugin", "check", truncated.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("error:") && stderr.contains("not a valid WebAssembly component"),
        "{stderr}"
    );

    let wrong = dist("fixtures/wrong-world.wasm");
    let (ok, _, stderr) = switchyard(&["plugin", "check", wrong.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("route"), "{stderr}");

    let (ok, _, stderr) = switchyard(&["plugin", "check", "/nonexistent/x.wasm"]);
    assert!(!ok);
    assert!(stderr.contains("cannot read"), "{stderr}");
}

#[test]
fn run_prints_the_decision_with_context_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let event = dir.path().join("event.json");
    std::fs::write(
        &event,
        r#"{"eventId":"e1","type":"ORDER_CREATED","payload":{"orderId":"12345"}}"#,
    )
    .unwrap();
    let order = dir.path().join("order.json");
    std::fs::write(&order, r#"{"id":"12345","region":"us"}"#).unwrap();
    let file = dist("default-router.wasm");
    let context = format!("order:12345={}", order.display());
    let (ok, stdout, stderr) = switchyard(&[
        "plugin",
        "run",
        file.to_str().unwrap(),
        "--event",
        event.to_str().unwrap(),
        "--context",
        &context,
        "--config",
        "delay_ms=0",
        "--config",
        "failure_rate=0",
    ]);
    assert!(ok, "{stdout}{stderr}");
    let out: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(out["decision"]["destination"], "orders-us");
    assert_eq!(out["plugin"]["name"], "default-router");
}

#[test]
fn run_reports_a_permanent_error_with_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    let event = dir.path().join("event.json");
    std::fs::write(
        &event,
        r#"{"eventId":"e1","type":"SHIPMENT","payload":{"carrier":7}}"#,
    )
    .unwrap();
    let file = dist("content-router.wasm");
    let (ok, stdout, _) = switchyard(&[
        "plugin",
        "run",
        file.to_str().unwrap(),
        "--event",
        event.to_str().unwrap(),
    ]);
    assert!(!ok);
    let out: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(out["error"]["kind"], "permanent");
    assert_eq!(out["error"]["retryable"], false);
}

/// `switchyard serve` with `env`, on an empty data directory; returns (success, stderr).
fn serve_with(env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("serve")
        .env_clear()
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("DATA_DIR", dir.path().join("data"))
        .env("PLUGINS_DIR", dir.path().join("plugins"))
        .envs(env.iter().copied())
        .output()
        .expect("run switchyard serve");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn serve_refuses_placeholder_and_short_secrets_with_one_clear_line() {
    for (secret, expected) in [
        ("change-me", "placeholder"),
        ("Secret", "placeholder"),
        ("test", "placeholder"),
        ("good-enough-secret-1,short", "secret 2 of 2"),
        ("whsec_AAAAAAAAAAAAAAAA", "12 bytes"),
    ] {
        let (ok, stderr) = serve_with(&[("HMAC_SECRET", secret)]);
        assert!(!ok, "{secret}: started");
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(lines.len(), 1, "{secret}: one error line: {stderr}");
        assert!(
            lines[0].contains("HMAC_SECRET")
                && lines[0].contains(expected)
                && lines[0].contains("openssl rand"),
            "{secret}: {stderr}"
        );
    }
    let (ok, stderr) = serve_with(&[
        ("HMAC_SECRET", "a-real-signing-secret-0123"),
        ("ADMIN_TOKEN", "changeme"),
    ]);
    assert!(!ok && stderr.contains("ADMIN_TOKEN"), "{stderr}");
}

/// Runs `switchyard plugin test <plugin> --cases <cases> [extra..]` with only `env` (and PATH).
fn plugin_test(plugin: &Path, cases: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["plugin", "test"])
        .arg(plugin)
        .arg("--cases")
        .arg(cases)
        .args(extra)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("run switchyard plugin test")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_content_router_passes_its_cases_file() {
    let cases =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins/content-router/cases.toml");
    let out = plugin_test(&dist("content-router.wasm"), &cases, &[], &[]);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("7 passed, 0 failed"), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ok ")).count(),
        7,
        "{text}"
    );
}

#[test]
fn a_failing_case_prints_expected_and_actual_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.json");
    std::fs::write(
        &cases,
        r#"{"cases": [
          {"name": "wrong destination", "event": {"type": "T", "payload": {"carrier": "dhl"}},
           "expect": {"destination": "carrier:ups", "metadata": {"lane": "express"}}},
          {"name": "right", "event": {"type": "T", "payload": {"region": "eu"}},
           "expect": {"destination": "region:eu"}},
          {"name": "expects an error", "event": {"type": "T", "payload": {"region": "eu"}},
           "expect": {"error": "transient"}}
        ]}"#,
    )
    .unwrap();
    let out = plugin_test(&dist("content-router.wasm"), &cases, &[], &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL  wrong destination"), "{text}");
    assert!(
        text.contains(r#"destination: expected "carrier:ups", got "carrier:dhl""#),
        "{text}"
    );
    assert!(
        text.contains(r#"metadata.lane: expected "express", got "standard""#),
        "{text}"
    );
    assert!(
        text.contains(r#"expected: {"destination":"carrier:ups""#),
        "{text}"
    );
    assert!(
        text.contains(r#"actual:   {"decision":{"destination":"carrier:dhl""#),
        "{text}"
    );
    assert!(
        text.contains("expected a transient error, got a decision"),
        "{text}"
    );
    assert!(text.contains("1 passed, 2 failed"), "{text}");

    // The same as JSON, for CI.
    let out = plugin_test(&dist("content-router.wasm"), &cases, &["--json"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(
        (report["passed"].as_u64(), report["failed"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(report["plugin"]["name"], "content-router");
    let first = &report["cases"][0];
    assert_eq!(first["passed"], false);
    assert_eq!(first["actual"]["decision"]["destination"], "carrier:dhl");
    assert_eq!(first["differences"].as_array().unwrap().len(), 2);
    assert_eq!(report["cases"][1]["passed"], true);
}

#[test]
fn the_limits_come_from_the_gateway_s_configuration() {
    // A call that sleeps 1 s: a timeout under PLUGIN_TIMEOUT_MS=300, as in the gateway; routed
    // under the default (10 s). Same file, same case, only the configuration differs.
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.toml");
    std::fs::write(
        &cases,
        "[[case]]\nname = \"a slow call\"\nevent = { type = \"sleep\", payload = { ms = 1000 } }\nexpect = { error = \"timeout\" }\n",
    )
    .unwrap();
    let chaos = dist("fixtures/chaos.wasm");
    let out = plugin_test(&chaos, &cases, &[], &[("PLUGIN_TIMEOUT_MS", "300")]);
    assert!(out.status.success(), "{}", stdout(&out));
    let out = plugin_test(&chaos, &cases, &[], &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(r#""destination":"slept""#), "{text}");
    // A configuration file works the same way (SWITCHYARD_CONFIG), and a bad one is refused.
    let config = dir.path().join("switchyard.toml");
    std::fs::write(&config, "plugin_timeout_ms = 300\n").unwrap();
    let out = plugin_test(
        &chaos,
        &cases,
        &[],
        &[("SWITCHYARD_CONFIG", config.to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", stdout(&out));
    let out = plugin_test(&chaos, &cases, &[], &[("PLUGIN_TIMEOUT_MS", "1")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PLUGIN_TIMEOUT_MS must be at least 10"));
}

#[test]
fn a_keyed_plugin_s_ordering_key_and_its_config_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.toml");
    std::fs::write(
        &cases,
        r#"
[[case]]
name = "keyed by the payload's key"
event = { type = "T", payload = { key = "order-1", seq = 3 } }
expect = { destination = "ordered:order-1", orderingKey = "order-1" }

[[case]]
name = "a wrong key expectation fails"
event = { type = "T", payload = { key = "order-2" } }
expect = { destination = "ordered:order-2", orderingKey = "order-9" }
"#,
    )
    .unwrap();
    let out = plugin_test(&dist("fixtures/keyed.wasm"), &cases, &[], &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("ok    keyed by the payload's key"), "{text}");
    assert!(
        text.contains(r#"orderingKey: expected "order-9", got "order-2""#),
        "{text}"
    );

    // Each case's `config` reaches the plugin through the `config` import.
    let cases = dir.path().join("config.toml");
    std::fs::write(
        &cases,
        r#"
[config]
delay_ms = 0
failure_rate = 0

[[case]]
name = "routes with the file's config"
event = { type = "ORDER_CREATED", payload = {} }
expect = { destination = "orders", metadata = { service = "orders" } }

[[case]]
name = "fails with its own"
event = { type = "ORDER_CREATED", payload = {} }
config = { failure_rate = 1 }
expect = { error = "transient" }
"#,
    )
    .unwrap();
    let out = plugin_test(&dist("default-router.wasm"), &cases, &[], &[]);
    assert!(out.status.success(), "{}", stdout(&out));
}

#[test]
fn a_malformed_cases_file_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.toml");
    std::fs::write(
        &cases,
        "[[case]]\nname = \"both\"\nevent = { type = \"T\" }\nexpect = { destination = \"x\", error = \"transient\" }\n",
    )
    .unwrap();
    let out = plugin_test(&dist("content-router.wasm"), &cases, &[], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not both"), "{err}");
}

#[test]
fn the_kit_commands_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (ok, _, stderr) = switchyard(&["plugin", "new", "9-lives", "--dir", d]);
    assert!(!ok && stderr.contains("starting with a letter"), "{stderr}");
    let (ok, _, stderr) = switchyard(&["plugin", "build", d]);
    assert!(
        !ok && stderr.contains("is not a plugin project"),
        "{stderr}"
    );
    let project = dir.path().join("p");
    let p = project.to_str().unwrap();
    let (ok, stdout, _) = switchyard(&["plugin", "new", "unbuilt", "--dir", p]);
    assert!(ok, "{stdout}");
    let (ok, _, stderr) = switchyard(&["plugin", "test", p]);
    assert!(
        !ok && stderr.contains("is not built: switchyard plugin build"),
        "{stderr}"
    );
    let (ok, _, stderr) = switchyard(&["plugin", "new", "again", "--dir", p]);
    assert!(!ok && stderr.contains("is not empty"), "{stderr}");
}
