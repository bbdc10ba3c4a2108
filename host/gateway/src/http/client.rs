//! Who sent a request, and the per-client rate limit on ingestion.
//!
//! The client is the TCP peer, unless the peer is one of `TRUSTED_PROXIES`: then it is the
//! right-most address in `X-Forwarded-For` that is not itself a trusted proxy (each proxy appends
//! the address it received the request from, so everything left of the first untrusted hop may
//! be forged by the client). The limiter keeps one entry per client; a background task drops the
//! entries of clients idle for a window, so the table stays as small as the active client set.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request};
use axum::response::IntoResponse;
use ipnet::IpNet;
use tower_governor::GovernorError;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::KeyExtractor;

use super::error::ApiError;

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Arc<Vec<IpNet>>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies(Arc::new(nets))
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client address of a request that came from `peer` with `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(hop);
        let mut client = peer;
        // Right to left: the first hop that is not a trusted proxy is the client.
        for hop in hops.collect::<Vec<_>>().into_iter().rev() {
            match hop {
                Ok(ip) if self.trusts(ip) => client = ip,
                Ok(ip) => return ip,
                // An unparsable hop: nothing left of it can be believed.
                Err(_) => return client,
            }
        }
        client
    }
}

/// One `X-Forwarded-For` hop: an address, with or without a port (`1.2.3.4:80`, `[::1]:80`,
/// `[::1]`); an IPv4-mapped IPv6 address counts as the IPv4 one.
fn hop(text: &str) -> Result<IpAddr, ()> {
    let text = text.trim();
    text.parse::<IpAddr>()
        .or_else(|_| text.parse::<SocketAddr>().map(|a| a.ip()))
        .or_else(|_| {
            text.strip_prefix('[')
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<IpAddr>().ok())
                .ok_or(())
        })
        .map(|ip| ip.to_canonical())
}

/// The peer address axum records for each connection (`into_make_service_with_connect_info`).
pub fn peer<B>(req: &Request<B>) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// The rate-limit key: the client address.
#[derive(Debug, Clone)]
pub struct ClientKey(pub TrustedProxies);

impl KeyExtractor for ClientKey {
    type Key = IpAddr;

    fn extract<T>(&self, req: &Request<T>) -> Result<IpAddr, GovernorError> {
        let peer = peer(req).ok_or(GovernorError::UnableToExtractKey)?;
        Ok(self.0.client(peer, req.headers()))
    }
}

/// The ingestion rate limit: `max` requests per client per `window`.
pub fn rate_limit(
    max: u32,
    window: Duration,
    proxies: TrustedProxies,
) -> GovernorConfig<ClientKey, governor::middleware::NoOpMiddleware<governor::clock::QuantaInstant>>
{
    let per_request = window / max.max(1);
    let config = GovernorConfigBuilder::default()
        .key_extractor(ClientKey(proxies))
        .period(per_request.max(Duration::from_nanos(1)))
        .burst_size(max)
        .error_handler(|e| {
            let wait = match &e {
                GovernorError::TooManyRequests { wait_time, .. } => *wait_time,
                _ => 1,
            };
            ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests",
            )
            .retry_after(wait.max(1))
            .into_response()
        })
        .finish()
        .expect("a valid rate limit");
    let limiter = Arc::downgrade(config.limiter());
    tokio::spawn(prune(limiter, window.max(Duration::from_secs(1))));
    config
}

/// The limiter behind [`rate_limit`].
type Limiter = governor::RateLimiter<
    IpAddr,
    governor::state::keyed::DefaultKeyedStateStore<IpAddr>,
    governor::clock::DefaultClock,
    governor::middleware::NoOpMiddleware<governor::clock::QuantaInstant>,
>;

/// Forgets clients idle for a window, every window, and publishes how many are tracked
/// (`switchyard_rate_limit_clients`). Ends when the limiter is dropped with the router.
async fn prune(limiter: Weak<Limiter>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(limiter) = limiter.upgrade() else {
            return;
        };
        limiter.retain_recent();
        limiter.shrink_to_fit();
        metrics::gauge!("switchyard_rate_limit_clients").set(limiter.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_counts_only_from_a_trusted_peer() {
        let none = TrustedProxies::default();
        let lb = TrustedProxies::new(vec![
            "127.0.0.1/32".parse().unwrap(),
            "198.51.100.0/24".parse().unwrap(),
        ]);
        let h = headers("203.0.113.9");
        assert_eq!(none.client(ip("127.0.0.1"), &h), ip("127.0.0.1"));
        assert_eq!(lb.client(ip("127.0.0.1"), &h), ip("203.0.113.9"));
        // An untrusted peer cannot choose its address.
        assert_eq!(lb.client(ip("192.0.2.1"), &h), ip("192.0.2.1"));
        // A forged left part does not count: the right-most untrusted hop is the client.
        let h = headers("1.1.1.1, 203.0.113.9, 198.51.100.7");
        assert_eq!(lb.client(ip("127.0.0.1"), &h), ip("203.0.113.9"));
        // Garbage stops the walk at the last believable hop.
        let h = headers("203.0.113.9, not-an-ip, 198.51.100.7");
        assert_eq!(lb.client(ip("127.0.0.1"), &h), ip("198.51.100.7"));
        assert_eq!(
            lb.client(ip("127.0.0.1"), &HeaderMap::new()),
            ip("127.0.0.1")
        );
        // Ports, brackets and IPv4-mapped peers (a gateway listening on `::`).
        let h = headers("203.0.113.9:4711, [2001:db8::1]:443");
        assert_eq!(lb.client(ip("::ffff:127.0.0.1"), &h), ip("2001:db8::1"));
        let h = headers("[2001:db8::2], 198.51.100.7:80");
        assert_eq!(lb.client(ip("127.0.0.1"), &h), ip("2001:db8::2"));
    }
}
