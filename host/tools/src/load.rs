//! `switchyard load`: a load generator that signs requests exactly as a producer would, and
//! optionally waits until every accepted event is final (`--wait`) or delivered to a receiver
//! it runs itself (`--receive`). Bounded in count and time; refuses targets off this machine
//! unless told otherwise.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::sign::Scheme;
use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};

pub use crate::latency::Latency;

/// Options of a load run.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadOptions {
    /// Base URL of the gateway.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    pub url: String,
    /// Signing secret (the gateway's HMAC_SECRET).
    #[arg(long, env = "HMAC_SECRET", hide_env_values = true)]
    pub secret: String,
    #[arg(long, value_enum, default_value = "hmac")]
    pub scheme: Scheme,
    /// Requests to send (the run stops at whichever of --requests and --duration comes first).
    #[arg(long, default_value_t = 1000)]
    pub requests: u64,
    /// Longest time to send, in seconds (at most 600).
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// Target request rate per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// Event ids repeat every N requests (0 = every id unique): exercises idempotency.
    #[arg(long, default_value_t = 0)]
    pub repeat_every: u64,
    /// Event type to send.
    #[arg(long = "type", default_value = "ORDER_CREATED")]
    pub event_type: String,
    /// After sending, wait until every accepted event is ROUTED or FAILED and report the drain.
    #[arg(long)]
    pub wait: bool,
    /// Longest wait for the drain, in seconds.
    #[arg(long, default_value_t = 300)]
    pub wait_timeout: u64,
    /// Admin token for /events/stats (the gateway's ADMIN_TOKEN).
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Allow a target that is not on this machine.
    #[arg(long)]
    pub allow_remote: bool,
    /// Print a progress line every second.
    #[arg(long)]
    pub progress: bool,
    /// Receive the deliveries on 127.0.0.1:PORT (a destination of the gateway's manifest, with
    /// `allow_private = true`) and report deliveries/s and ingest-to-receiver latency; waits up
    /// to --wait-timeout for every accepted event to arrive.
    #[arg(long, value_name = "PORT")]
    pub receive: Option<u16>,
    /// The destination's `whsec_` key: the receiver checks every signature with it.
    #[arg(long, env = "RECEIVE_SECRET", hide_env_values = true)]
    pub receive_secret: Option<String>,
}

/// What a load run measured.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub sent: u64,
    pub elapsed_secs: f64,
    pub requests_per_sec: f64,
    pub latency_ms: Latency,
    /// HTTP status (or `error` for a transport failure) → count.
    pub statuses: BTreeMap<String, u64>,
    /// Distinct event ids answered 202.
    pub accepted_events: u64,
    pub drain: Option<Drain>,
    /// What the receiver got (`--receive`).
    pub delivered: Option<crate::receive::Delivered>,
}

/// The drain after the run (`--wait`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Drain {
    pub drain_secs: f64,
    pub events_per_sec: f64,
    pub routed: u64,
    pub failed: u64,
    pub retries: u64,
    pub duplicates: u64,
}

fn is_loopback(url: &str) -> anyhow::Result<bool> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("invalid URL {url}"))?;
    let host = parsed
        .host_str()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']');
    Ok(host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()))
}

fn now() -> Duration {
    Duration::from_millis(switchyard_model::clock::now_ms())
}

struct Shared {
    opts: LoadOptions,
    client: reqwest::Client,
    next: AtomicU64,
    done: AtomicU64,
    deadline: Instant,
    run_id: String,
    /// The signing key of `--secret` (a `whsec_` key decoded, as the gateway does).
    key: Vec<u8>,
    limiter: Option<governor::DefaultDirectRateLimiter>,
    receipts: Option<Arc<crate::receive::Receipts>>,
}

struct TaskResult {
    hist: Histogram<u64>,
    statuses: BTreeMap<String, u64>,
    accepted: Vec<u64>,
}

async fn worker(shared: Arc<Shared>) -> TaskResult {
    let mut r = TaskResult {
        hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
        statuses: BTreeMap::new(),
        accepted: Vec::new(),
    };
    let o = &shared.opts;
    let endpoint = format!("{}/events", o.url.trim_end_matches('/'));
    loop {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        if i >= o.requests || Instant::now() >= shared.deadline {
            break;
        }
        if let Some(l) = &shared.limiter {
            l.until_ready().await;
        }
        let n = if o.repeat_every > 0 {
            i % o.repeat_every
        } else {
            i
        };
        let body = serde_json::to_vec(&json!({
            "eventId": format!("{}-{n}", shared.run_id),
            "type": o.event_type,
            "payload": { "orderId": format!("{}", 10_000 + n % 100), "seq": i },
        }))
        .expect("JSON");
        let mut req = shared
            .client
            .post(&endpoint)
            .header("content-type", "application/json");
        let id = format!("msg_{}_{i}", shared.run_id);
        for (name, value) in
            crate::sign::headers(&shared.key, o.scheme, &body, &id, now().as_secs())
        {
            req = req.header(name, value);
        }
        if let Some(r) = &shared.receipts {
            r.sending(n);
        }
        let started = Instant::now();
        let status = match req.body(body).send().await {
            Ok(resp) => {
                let s = resp.status().as_u16();
                let _ = resp.bytes().await;
                s.to_string()
            }
            Err(_) => "error".to_string(),
        };
        let _ = r.hist.record((started.elapsed().as_micros() as u64).max(1));
        if status == "202" {
            r.accepted.push(n);
        }
        *r.statuses.entry(status).or_default() += 1;
        shared.done.fetch_add(1, Ordering::Relaxed);
    }
    r
}

async fn stats(client: &reqwest::Client, o: &LoadOptions) -> anyhow::Result<Value> {
    let mut req = client.get(format!("{}/events/stats", o.url.trim_end_matches('/')));
    if let Some(t) = &o.admin_token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    if !resp.status().is_success() {
        bail!(
            "GET /events/stats answered {} (set --admin-token?)",
            resp.status()
        );
    }
    Ok(resp.json().await?)
}

fn field(v: &Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or(0)
}

/// Runs the load and returns what it measured.
pub async fn run(opts: LoadOptions) -> anyhow::Result<Report> {
    if !opts.allow_remote && !is_loopback(&opts.url)? {
        bail!(
            "{} is not on this machine; pass --allow-remote to target it",
            opts.url
        );
    }
    anyhow::ensure!(opts.concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(opts.duration <= 600, "--duration is at most 600 s");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.concurrency)
        .timeout(Duration::from_secs(30))
        .build()?;
    let before = if opts.wait {
        Some(stats(&client, &opts).await?)
    } else {
        None
    };
    let run_id = format!("load-{}-{}", now().as_millis(), std::process::id());
    let receiver = match opts.receive {
        Some(port) => Some(
            crate::receive::start(
                port,
                opts.receive_secret.as_deref(),
                format!("{run_id}-"),
                opts.requests,
            )
            .await?,
        ),
        None => None,
    };
    let shared = Arc::new(Shared {
        client: client.clone(),
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        deadline: Instant::now() + Duration::from_secs(opts.duration),
        run_id,
        key: switchyard_model::signing::key(&opts.secret).map_err(anyhow::Error::msg)?,
        receipts: receiver.as_ref().map(|r| r.receipts.clone()),
        limiter: std::num::NonZeroU32::new(opts.rate)
            .map(|r| governor::RateLimiter::direct(governor::Quota::per_second(r))),
        opts: opts.clone(),
    });
    let started = Instant::now();
    let progress = opts.progress.then(|| {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let done = shared.done.load(Ordering::Relaxed);
                eprintln!("[load] {done} sent ({} req/s)", done - last);
                last = done;
            }
        })
    });
    let tasks: Vec<_> = (0..opts.concurrency)
        .map(|_| tokio::spawn(worker(shared.clone())))
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut statuses = BTreeMap::new();
    let mut accepted = std::collections::BTreeSet::new();
    for t in tasks {
        let r = t.await?;
        hist.add(&r.hist).expect("same bounds");
        for (k, v) in r.statuses {
            *statuses.entry(k).or_default() += v;
        }
        accepted.extend(r.accepted);
    }
    let elapsed = started.elapsed();
    if let Some(p) = progress {
        p.abort();
    }
    let sent = hist.len();
    let mut report = Report {
        sent,
        elapsed_secs: elapsed.as_secs_f64(),
        requests_per_sec: sent as f64 / elapsed.as_secs_f64().max(1e-9),
        latency_ms: Latency::of_micros(&hist),
        statuses,
        accepted_events: accepted.len() as u64,
        drain: None,
        delivered: None,
    };
    if let Some(receiver) = &receiver {
        let receipts = &receiver.receipts;
        let timeout = Duration::from_secs(opts.wait_timeout);
        crate::receive::wait_for(receipts, report.accepted_events, timeout, opts.progress).await;
        if receipts.events() < report.accepted_events {
            bail!(
                "{} of {} accepted events delivered to 127.0.0.1:{} after {} s",
                receipts.events(),
                report.accepted_events,
                opts.receive.unwrap_or_default(),
                opts.wait_timeout
            );
        }
        report.delivered = Some(receipts.report());
    }
    if let Some(before) = before {
        let target =
            field(&before, &["routed"]) + field(&before, &["failed"]) + report.accepted_events;
        let wait_deadline = Instant::now() + Duration::from_secs(opts.wait_timeout);
        loop {
            let s = match stats(&client, &opts).await {
                Ok(s) => s,
                Err(e) if Instant::now() < wait_deadline => {
                    eprintln!("[drain] stats unavailable ({e}); retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let finished = field(&s, &["routed"]) + field(&s, &["failed"]);
            let idle = field(&s, &["ready"]) == 0
                && field(&s, &["inFlight"]) == 0
                && field(&s, &["delayed"]) == 0;
            if opts.progress {
                eprintln!(
                    "[drain] {} of {} final; ready {} in flight {} delayed {}",
                    finished.saturating_sub(target - report.accepted_events),
                    report.accepted_events,
                    s["ready"],
                    s["inFlight"],
                    s["delayed"]
                );
            }
            if finished >= target && idle {
                let drain = started.elapsed().as_secs_f64();
                let delta = |k: &[&str]| field(&s, k).saturating_sub(field(&before, k));
                report.drain = Some(Drain {
                    drain_secs: drain,
                    events_per_sec: report.accepted_events as f64 / drain.max(1e-9),
                    routed: delta(&["routed"]),
                    failed: delta(&["failed"]),
                    retries: delta(&["workers", "retried"]),
                    duplicates: delta(&["workers", "duplicates"]),
                });
                break;
            }
            if Instant::now() >= wait_deadline {
                bail!("events not final after {} s: {s}", opts.wait_timeout);
            }
            tokio::time::sleep(Duration::from_millis(if opts.progress {
                1000
            } else {
                200
            }))
            .await;
        }
    }
    Ok(report)
}

/// The report as a person reads it.
pub fn print(r: &Report) {
    println!(
        "sent {} requests in {:.2} s: {:.0} req/s",
        r.sent, r.elapsed_secs, r.requests_per_sec
    );
    println!("latency ms: {}", r.latency_ms);
    let statuses: Vec<String> = r
        .statuses
        .iter()
        .map(|(k, v)| format!("{k} × {v}"))
        .collect();
    println!("statuses: {}", statuses.join(", "));
    println!("accepted events: {}", r.accepted_events);
    if let Some(d) = &r.drain {
        println!(
            "drained in {:.2} s ({:.1} events/s): ROUTED {}, FAILED {}, retries {}, duplicate deliveries {}",
            d.drain_secs, d.events_per_sec, d.routed, d.failed, d.retries, d.duplicates
        );
    }
    if let Some(d) = &r.delivered {
        println!(
            "delivered {} events in {:.2} s from the first ingest to the last receipt: {:.0} deliveries/s",
            d.events, d.secs, d.deliveries_per_sec
        );
        println!("ingest to receiver ms: {}", d.ingest_to_receiver_ms);
        println!(
            "repeated receipts {}, unmatched requests {}, bad signatures {}",
            d.repeats, d.unmatched, d.bad_signatures
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_loopback_targets_by_default() {
        for ok in [
            "http://127.0.0.1:3000",
            "http://localhost:1",
            "http://[::1]:80",
            "http://127.8.9.10",
        ] {
            assert!(super::is_loopback(ok).unwrap(), "{ok}");
        }
        for remote in [
            "http://10.0.0.1:3000",
            "http://example.com",
            "http://192.168.1.1",
        ] {
            assert!(!super::is_loopback(remote).unwrap(), "{remote}");
        }
    }
}
