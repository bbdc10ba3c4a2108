//! `switchyard bench plugin`: the plugin host's own figures — per-call overhead (fresh instance +
//! call of a no-op route) and write-to-serving reload time with calls failing during swaps.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use switchyard_model::routing::RouteRequest;
use switchyard_runtime::manifest::MANIFEST_FILE;
use switchyard_runtime::{Limits, NoContext, Plugins, Sandbox};

/// Options of the plugin benchmark.
#[derive(Debug, Clone)]
pub struct PluginBench {
    /// A plugin whose `route` returns at once (the `noop` fixture).
    pub noop: PathBuf,
    /// A second plugin to alternate with during the reload measurement.
    pub alternate: PathBuf,
    pub calls: u32,
    pub reloads: u32,
}

fn request(i: u64) -> RouteRequest {
    RouteRequest {
        event_id: format!("bench-{i}"),
        event_type: "BENCH".into(),
        correlation_id: format!("bench-{i}"),
        payload: "{}".into(),
        received_at_ms: 0,
        attempt: 1,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn copy_atomically(from: &Path, to: &Path) -> anyhow::Result<()> {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp)?;
    std::fs::rename(&tmp, to)?;
    Ok(())
}

/// Runs the benchmark and prints its figures.
pub async fn plugin(opts: PluginBench) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join(MANIFEST_FILE),
        "default = \"bench\"\n[config.bench]\ndelay_ms = 0\nfailure_rate = 0\n",
    )?;
    let target = dir.path().join("bench.wasm");
    std::fs::copy(&opts.noop, &target)?;
    let limits = Limits {
        max_concurrent_calls: 64,
        ..Limits::default()
    };
    let host = Plugins::new(
        Sandbox::new(limits)?,
        Some(dir.path().to_path_buf()),
        Arc::new(NoContext),
    );
    host.load_dir().await?;
    anyhow::ensure!(
        host.version_of("bench").is_some(),
        "{} did not load",
        opts.noop.display()
    );

    // Per-call overhead, sequential, after a warm-up.
    for i in 0..200 {
        host.route(&request(i)).await.result?;
    }
    let mut samples = Vec::with_capacity(opts.calls as usize);
    for i in 0..u64::from(opts.calls) {
        let t = Instant::now();
        host.route(&request(i)).await.result?;
        samples.push(t.elapsed());
    }
    samples.sort();
    println!(
        "plugin call overhead (fresh instance + no-op route, {} sequential calls): p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        opts.calls,
        percentile(&samples, 0.50).as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e6,
    );

    // The same with a candidate shadowing every call: the live answer does not wait for it.
    std::fs::copy(&opts.alternate, dir.path().join("bench.next.wasm"))?;
    host.load_file(&dir.path().join("bench.next.wasm"))
        .await
        .map_err(anyhow::Error::msg)?;
    let mut shadowed = Vec::with_capacity(opts.calls as usize);
    for i in 0..u64::from(opts.calls) {
        let t = Instant::now();
        host.route(&request(i)).await.result?;
        shadowed.push(t.elapsed());
    }
    shadowed.sort();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let shadow = host
        .status()
        .into_iter()
        .find(|p| p.name == "bench")
        .and_then(|p| p.candidate)
        .map(|c| c.shadow)
        .ok_or_else(|| anyhow::anyhow!("the candidate did not load"))?;
    println!(
        "plugin call with a shadowing candidate ({} sequential calls): p50 {:.1} µs, p99 {:.1} µs; shadow calls compared {}, skipped {}",
        opts.calls,
        percentile(&shadowed, 0.50).as_secs_f64() * 1e6,
        percentile(&shadowed, 0.99).as_secs_f64() * 1e6,
        shadow.compared,
        shadow.skipped,
    );
    host.withdraw_candidate("bench", "benchmark step done", false)
        .await;
    std::fs::remove_file(dir.path().join("bench.next.wasm"))?;

    // Reload: write the other version, measure until it serves, with calls running throughout.
    let stop = CancellationToken::new();
    let watcher = switchyard_runtime::watch::spawn(host.clone(), stop.clone())?;
    let calls = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let mut load = Vec::new();
    for w in 0..4u64 {
        let (host, calls, failures, running) = (
            host.clone(),
            calls.clone(),
            failures.clone(),
            running.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut i = w << 32;
            while running.load(Ordering::Relaxed) {
                i += 1;
                if host.route(&request(i)).await.result.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let versions = [&opts.alternate, &opts.noop];
    let mut reloads = Vec::new();
    for r in 0..opts.reloads {
        let source = versions[(r % 2) as usize];
        let expected = switchyard_runtime::version::version_of(&std::fs::read(source)?);
        let t = Instant::now();
        copy_atomically(source, &target)?;
        while host.version_of("bench").as_deref() != Some(expected.as_str()) {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(10),
                "reload {r} did not take effect within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        reloads.push(t.elapsed());
    }
    running.store(false, Ordering::Relaxed);
    for l in load {
        l.await?;
    }
    stop.cancel();
    watcher.await?;
    reloads.sort();
    println!(
        "reload, write to serving ({} swaps, debounce {} ms included): p50 {:.0} ms, max {:.0} ms; calls during swaps: {}, failed: {}",
        reloads.len(),
        switchyard_runtime::watch::DEBOUNCE.as_millis(),
        percentile(&reloads, 0.5).as_secs_f64() * 1e3,
        reloads.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        calls.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
    );
    Ok(())
}

/// `switchyard bench hmac`: signature verification cost for a body of `size` bytes.
pub fn hmac(size: usize, iterations: u32) -> anyhow::Result<()> {
    use switchyard_gateway::http::signature::{HMAC_HEADER, Verifier};
    use switchyard_model::signing::sign_hex;
    let body = vec![b'x'; size];
    let verifier = Verifier::new(
        &["bench-signing-secret-0123456789"],
        Duration::from_secs(300),
    )
    .map_err(anyhow::Error::msg)?;
    let mut headers = http::HeaderMap::new();
    headers.insert(
        HMAC_HEADER,
        sign_hex(b"bench-signing-secret-0123456789", &body).parse()?,
    );
    let t = Instant::now();
    for _ in 0..iterations {
        verifier
            .verify(&headers, std::hint::black_box(&body), 0)
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    let per = t.elapsed() / iterations.max(1);
    println!(
        "HMAC-SHA256 verification of a {size}-byte body: {:.2} µs per request ({iterations} iterations)",
        per.as_secs_f64() * 1e6
    );
    Ok(())
}
