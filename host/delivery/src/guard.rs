//! The SSRF guard: a destination may not reach loopback, private, link-local (cloud metadata),
//! shared or reserved addresses unless it sets `allow_private = true`. The check happens at
//! delivery time, after DNS: the HTTP client's resolver returns only the addresses that pass, so
//! the connection goes to an address that was checked (no second resolution), and an IP literal
//! in the URL is checked before the request. Redirects are not followed and no proxy is used
//! (the client is built that way), so neither can lead elsewhere.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Why `ip` is not a public address a destination may reach, or `None` when it is.
pub fn refused(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(a) => refused_v4(a),
        IpAddr::V6(a) => refused_v6(a),
    }
}

fn refused_v4(a: Ipv4Addr) -> Option<&'static str> {
    let o = a.octets();
    Some(if a.is_loopback() {
        "a loopback address"
    } else if a.is_private() {
        "a private address"
    } else if a.is_link_local() {
        "a link-local address (cloud metadata services live there)"
    } else if o[0] == 0 {
        "an unspecified address"
    } else if a.is_broadcast() || a.is_multicast() {
        "a broadcast or multicast address"
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        "a shared (carrier-grade NAT) address"
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        "an IETF protocol address (192.0.0.0/24)"
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        "a benchmarking address (198.18.0.0/15)"
    } else if o[0] >= 240 {
        "a reserved address"
    } else {
        return None;
    })
}

fn refused_v6(a: Ipv6Addr) -> Option<&'static str> {
    let s = a.segments();
    // Addresses that carry an IPv4 address: judge that one.
    let embedded = match s {
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => {
            Some(Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7])))
        }
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))),
        _ => None,
    };
    if let Some(v4) = embedded {
        return refused_v4(v4);
    }
    Some(if a.is_loopback() {
        "a loopback address"
    } else if a.is_unspecified() {
        "an unspecified address"
    } else if a.is_multicast() {
        "a multicast address"
    } else if (s[0] & 0xfe00) == 0xfc00 {
        "a unique local (private) address"
    } else if (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xffc0) == 0xfec0 {
        "a link-local address"
    } else if s[0] == 0 {
        "a reserved address"
    } else {
        return None;
    })
}

/// The refusal, as the error a delivery attempt fails with.
#[derive(Debug, thiserror::Error)]
#[error(
    "refused by the SSRF guard: {host} is {reason}; set allow_private = true on the destination to allow it"
)]
pub struct Refused {
    pub host: String,
    pub reason: &'static str,
}

/// Checks a URL whose host is an IP literal (the resolver is not asked for those).
pub fn check_literal(url: &reqwest::Url, allow_private: bool) -> Result<(), Refused> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(a)) => IpAddr::V4(a),
        Some(url::Host::Ipv6(a)) => IpAddr::V6(a),
        _ => return Ok(()),
    };
    match refused(ip) {
        Some(reason) if !allow_private => Err(Refused {
            host: ip.to_string(),
            reason,
        }),
        _ => Ok(()),
    }
}

/// The HTTP client's resolver: system DNS, then only the addresses that pass the guard.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut reason = "unresolvable";
            let allowed: Vec<SocketAddr> = all
                .into_iter()
                .filter(|a| match refused(a.ip()) {
                    Some(why) if !allow_private => {
                        reason = why;
                        false
                    }
                    _ => true,
                })
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(Refused { host, reason }) as _);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    // Only classification here: no traffic is sent to any of these addresses.
    #[test]
    fn internal_addresses_are_refused() {
        for internal in [
            "127.0.0.1",
            "127.8.9.10",
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.1.1",
            "169.254.169.254", // AWS, GCP, Azure metadata
            "169.254.0.1",
            "100.100.100.200", // Alibaba metadata (shared address space)
            "100.64.0.1",
            "192.0.0.192", // Oracle metadata
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fd00:ec2::254", // AWS metadata over IPv6
            "fc00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe", // NAT64 of 169.254.169.254
            "2002:a00:1::",       // 6to4 of 10.0.0.1
        ] {
            assert!(refused(ip(internal)).is_some(), "{internal} is allowed");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "2606:4700::1111",
            "2001:db8::1",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(refused(ip(public)), None, "{public} is refused");
        }
    }

    #[test]
    fn literals_are_checked_unless_allowed() {
        for url in [
            "http://127.0.0.1:1/x",
            "http://[::1]:1/",
            "http://10.1.2.3/",
        ] {
            let url: reqwest::Url = url.parse().unwrap();
            let e = check_literal(&url, false).unwrap_err();
            assert!(e.to_string().contains("allow_private"), "{e}");
            assert!(check_literal(&url, true).is_ok());
        }
        let named: reqwest::Url = "http://localhost:1/".parse().unwrap();
        assert!(
            check_literal(&named, false).is_ok(),
            "names go through the resolver"
        );
    }
}
