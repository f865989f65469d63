//! Who sent a request, for per-client limits: the client's network address. It is the TCP
//! peer's, unless the peer is a trusted proxy (`CAREPLANE_TRUSTED_PROXIES`): then it is the
//! nearest address the forwarding headers name that is not itself a trusted proxy, read from the
//! right of `Forwarded: for=` (else `X-Forwarded-For`). Only the right end was appended by hops we
//! trust; whatever stands further left the client may have written, so the first untrusted entry
//! from the right is the last one a client cannot forge.
//!
//! IPv6 addresses count per /64, the block one subscriber usually gets: otherwise a single host
//! could take a fresh address, and a fresh quota, for every request.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request};
use ipnet::IpNet;

/// The client address of `request`; `None` when the connection's peer is unknown (a router
/// driven without `into_make_service_with_connect_info`).
pub fn address<B>(request: &Request<B>, trusted_proxies: &[IpNet]) -> Option<IpAddr> {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical())?;
    Some(behind_proxies(peer, request.headers(), trusted_proxies))
}

/// `address` as a limiter key part: IPv4 as is, IPv6 as its /64 (`2001:db8:1:2::/64`).
pub fn key_part(address: Option<IpAddr>) -> String {
    match address {
        Some(IpAddr::V6(v6)) => {
            let [a, b, c, d, ..] = v6.segments();
            format!("{}/64", Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
        }
        Some(v4) => v4.to_string(),
        None => "unknown".into(),
    }
}

fn behind_proxies(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_for(headers).into_iter().rev() {
        // `unknown`, an obfuscated name or garbage: nothing reliable beyond this hop, so the
        // last trusted address stands for the client (conservative: they share its quota).
        let Some(ip) = hop else { break };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// The `for=` nodes of every `Forwarded` element in order, or else the `X-Forwarded-For`
/// entries; `None` for a node that is not an address.
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    };
    let forwarded = values("forwarded");
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .flat_map(|v| v.split(','))
            .map(|element| {
                element.split(';').find_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    key.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| node(value))
                        .flatten()
                })
            })
            .collect();
    }
    values("x-forwarded-for")
        .iter()
        .flat_map(|v| v.split(','))
        .map(node)
        .collect()
}

/// `192.0.2.1`, `192.0.2.1:4711`, `"[2001:db8::1]:4711"`, `2001:db8::1`; anything else `None`.
fn node(value: &str) -> Option<IpAddr> {
    let value = value.trim().trim_matches('"');
    let ip = match value.strip_prefix('[') {
        Some(rest) => rest.split(']').next()?.parse().ok(),
        None => value
            .parse::<IpAddr>()
            .ok()
            .or_else(|| value.parse::<SocketAddr>().ok().map(|s| s.ip())),
    };
    ip.map(|ip: IpAddr| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn proxies() -> Vec<IpNet> {
        vec!["10.0.0.0/8".parse().unwrap()]
    }

    #[test]
    fn forwarding_headers_of_an_untrusted_peer_are_ignored() {
        let forged = headers(&[("x-forwarded-for", "198.51.100.1")]);
        assert_eq!(
            behind_proxies(ip("203.0.113.5"), &forged, &proxies()),
            ip("203.0.113.5")
        );
    }

    #[test]
    fn behind_a_trusted_proxy_the_nearest_untrusted_hop_is_the_client() {
        // The client prepended a fake address; the proxy appended the real one.
        let xff = headers(&[("x-forwarded-for", "1.2.3.4, 198.51.100.7, 10.1.1.1")]);
        assert_eq!(
            behind_proxies(ip("10.0.0.2"), &xff, &proxies()),
            ip("198.51.100.7")
        );
        let rfc7239 = headers(&[(
            "forwarded",
            "for=1.2.3.4, for=\"[2001:db8::7]:4711\";proto=https",
        )]);
        assert_eq!(
            behind_proxies(ip("10.0.0.2"), &rfc7239, &proxies()),
            ip("2001:db8::7")
        );
        // Positive control: nothing forwarded, the proxy itself.
        assert_eq!(
            behind_proxies(ip("10.0.0.2"), &HeaderMap::new(), &proxies()),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn an_unreadable_hop_stops_the_walk_at_the_last_trusted_address() {
        let xff = headers(&[("x-forwarded-for", "198.51.100.7, unknown, 10.1.1.1")]);
        assert_eq!(
            behind_proxies(ip("10.0.0.2"), &xff, &proxies()),
            ip("10.1.1.1")
        );
        assert_eq!(node("198.51.100.7:8080"), Some(ip("198.51.100.7")));
        assert_eq!(node("::ffff:198.51.100.7"), Some(ip("198.51.100.7")));
        assert_eq!(node("_hidden"), None);
    }

    #[test]
    fn ipv6_clients_count_per_64_and_ipv4_per_address() {
        assert_eq!(
            key_part(Some(ip("2001:db8:1:2:aaaa::1"))),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            key_part(Some(ip("2001:db8:1:2:bbbb::9"))),
            "2001:db8:1:2::/64"
        );
        assert_eq!(key_part(Some(ip("198.51.100.7"))), "198.51.100.7");
    }
}
