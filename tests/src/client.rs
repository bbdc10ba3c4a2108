//! An HTTP client that signs like a producer and reads like an operator, and helpers over its
//! answers (`/metrics`).

/// The signing secret of test gateways.
pub const TEST_SECRET: &str = "switchyard-test-signing-secret";
/// The admin token of test gateways.
pub const TEST_ADMIN_TOKEN: &str = "test-admin-token";

/// An HTTP client that signs like a producer.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
}

/// A response: status, headers, JSON body (`Null` when not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: serde_json::Value,
}

impl Client {
    pub fn new(base: &str) -> Self {
        Client {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_string(),
        }
    }

    async fn answer(r: reqwest::Response) -> Answer {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.unwrap_or_default();
        Answer {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        }
    }

    /// POSTs raw bytes with the given headers (no signature added).
    pub async fn post_raw(&self, body: Vec<u8>, headers: &[(&str, String)]) -> Answer {
        let mut req = self.http.post(format!("{}/events", self.base)).body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        Client::answer(req.send().await.expect("POST /events")).await
    }

    /// POSTs an event signed with `x-hmac-signature`.
    pub async fn send(&self, event: &serde_json::Value) -> Answer {
        self.try_send(event).await.expect("POST /events")
    }

    /// POSTs an event signed the Standard Webhooks way, with message id `id` at time `ts`.
    pub async fn send_webhook(&self, event: &serde_json::Value, id: &str, ts: u64) -> Answer {
        let body = serde_json::to_vec(event).unwrap();
        let sig = switchyard_model::signing::sign_webhook(TEST_SECRET.as_bytes(), id, ts, &body);
        let headers = [
            ("content-type", "application/json".to_string()),
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", sig),
        ];
        self.post_raw(body, &headers).await
    }

    /// Like [`Self::send`], `None` when the connection fails (the gateway died mid-request).
    pub async fn try_send(&self, event: &serde_json::Value) -> Option<Answer> {
        let body = serde_json::to_vec(event).unwrap();
        let sig = switchyard_model::signing::sign_hex(TEST_SECRET.as_bytes(), &body);
        let r = self
            .http
            .post(format!("{}/events", self.base))
            .header("content-type", "application/json")
            .header("x-hmac-signature", sig)
            .body(body)
            .send()
            .await
            .ok()?;
        Some(Client::answer(r).await)
    }

    pub async fn get(&self, path: &str) -> Answer {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(TEST_ADMIN_TOKEN)
            .send()
            .await
            .expect("GET");
        Client::answer(r).await
    }

    pub async fn post_admin(&self, path: &str, body: serde_json::Value) -> Answer {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TEST_ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("POST");
        Client::answer(r).await
    }

    /// Any admin request: `method` on `path` with the admin token and an optional raw body;
    /// `token: None` sends none.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        token: Option<&str>,
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        Client::answer(req.send().await.expect("admin request")).await
    }

    /// Polls `GET /events/{id}` until every id is `ROUTED` or `FAILED`; returns the records.
    pub async fn wait_final(
        &self,
        ids: &[String],
        timeout: std::time::Duration,
    ) -> Vec<serde_json::Value> {
        let t = std::time::Instant::now();
        let mut done: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
        loop {
            for id in ids
                .iter()
                .filter(|i| !done.contains_key(*i))
                .cloned()
                .collect::<Vec<_>>()
            {
                let a = self.get(&format!("/events/{id}")).await;
                if a.status == 200 && matches!(a.body["state"].as_str(), Some("ROUTED" | "FAILED"))
                {
                    done.insert(id, a.body);
                }
            }
            if done.len() == ids.len() {
                return ids.iter().map(|i| done[i].clone()).collect();
            }
            assert!(
                t.elapsed() < timeout,
                "{} of {} events not final after {timeout:?}",
                ids.len() - done.len(),
                ids.len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Polls `/events/stats` until nothing is ready, in flight or delayed.
    pub async fn wait_idle(&self, timeout: std::time::Duration) -> serde_json::Value {
        let t = std::time::Instant::now();
        loop {
            let s = self.get("/events/stats").await.body;
            if s["ready"] == 0 && s["inFlight"] == 0 && s["delayed"] == 0 {
                return s;
            }
            assert!(
                t.elapsed() < timeout,
                "queue not idle after {timeout:?}: {s}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The text of `GET /metrics`.
pub async fn metrics(client: &Client) -> String {
    client
        .http
        .get(format!("{}/metrics", client.base))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The value of the first sample of `series` (a metric name with its labels, as printed) in a
/// metrics text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
