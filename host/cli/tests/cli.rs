//! The `switchyard plugin` commands on the plugins built from `plugins/`.

use std::path::PathBuf;
use std::process::Command;

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
