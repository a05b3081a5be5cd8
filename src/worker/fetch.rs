//! Fetching a segment (or an AI input) by URL, bounded in size and time, and
//! safe against server-side request forgery.
//!
//! The URL comes from whoever sent the work, so by default only public
//! addresses are fetched: private, loopback, link-local (cloud metadata at
//! 169.254.169.254 included), unique-local (fd00:ec2::254), CGNAT, unspecified,
//! multicast, broadcast, benchmarking, documentation and other reserved ranges
//! are refused, IPv4-mapped and NAT64/6to4-embedded IPv4 addresses judged by
//! the IPv4 address they carry. An allow list of CIDRs (`--fetch-allow`) lets
//! chosen ranges through.
//!
//! The check is made on the addresses a name resolves to, by the client's own
//! resolver ([`PolicyResolver`]), so the connection only ever goes to an address
//! that passed it (no DNS rebinding between check and connect). Hosts written
//! as IP literals skip the resolver, so they are checked before sending.
//! Redirects are not followed (a 3xx is a failure) and proxies from the
//! environment are not used. Errors say neither the address nor the HTTP
//! status seen; the details are logged at debug level.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tracing::debug;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("segment URL is not an http(s) URL")]
    BadUrl,
    #[error("segment URL refused: not a public address")]
    Refused,
    #[error("segment is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// The request failed: no connection, a timeout, or an answer other than
    /// 2xx (`status`, kept for the caller's error code, not shown).
    #[error("segment fetch failed")]
    Failed { status: Option<u16> },
}

/// A CIDR block such as `10.0.0.0/8` or `fd00::/8`; a bare address is a
/// single-address block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {0:?} (expected ADDRESS/PREFIX, e.g. 10.0.0.0/8 or fd00::/8)")]
pub struct CidrError(String);

impl Cidr {
    /// The block holding just `addr`.
    pub fn host(addr: IpAddr) -> Cidr {
        let addr = addr.to_canonical();
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Cidr { addr, prefix }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(u32::from(net)),
                u128::from(u32::from(ip)),
                32,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// Whether the top `prefix` of `bits` bits of `a` and `b` agree.
fn prefix_eq(a: u128, b: u128, bits: u32, prefix: u8) -> bool {
    let prefix = u32::from(prefix);
    if prefix == 0 {
        return true;
    }
    let shift = bits - prefix;
    (a >> shift) == (b >> shift)
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let bad = || CidrError(s.to_string());
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| bad())?
            }
            Some(_) => return Err(bad()),
        };
        if prefix > max {
            return Err(bad());
        }
        // An IPv4-mapped block (::ffff:a.b.c.d/96+) is the IPv4 block it maps.
        match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => Ok(Cidr {
                    addr: IpAddr::V4(v4),
                    prefix: prefix - 96,
                }),
                None => Ok(Cidr { addr, prefix }),
            },
            _ => Ok(Cidr { addr, prefix }),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Whether `ip` is a public unicast address: not private, loopback,
/// link-local, unique-local, CGNAT, unspecified, multicast, broadcast,
/// documentation, benchmarking or otherwise reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = a == 0 // "this network", 0.0.0.0 included
        || a == 10 // private
        || (a == 100 && (64..128).contains(&b)) // CGNAT (100.100.100.200: Alibaba metadata)
        || a == 127 // loopback
        || (a == 169 && b == 254) // link-local: 169.254.169.254 metadata
        || (a == 172 && (16..32).contains(&b)) // private
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments (192.0.0.192: Oracle metadata)
        || (a == 192 && b == 0 && c == 2) // TEST-NET-1
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 192 && b == 168) // private
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224; // multicast, reserved, 255.255.255.255 broadcast
    !refused
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let embedded_v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) reach the IPv4 address they carry.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded_v4(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return is_public_v4(embedded_v4(s[1], s[2]));
    }
    let refused = s[0] == 0 // ::, ::1, IPv4-compatible and other reserved (mapped handled above)
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // local-use NAT64 (64:ff9b:1::/48)
        || (s[0] == 0x100 && s[1] == 0 && s[2] == 0 && s[3] == 0) // discard-only (100::/64)
        || (s[0] == 0x2001 && s[1] < 0x200) // IETF protocol assignments, Teredo (2001::/23)
        || (s[0] == 0x2001 && s[1] == 0xdb8) // documentation
        || (s[0] == 0x3fff && s[1] < 0x1000) // documentation (3fff::/20)
        || (s[0] & 0xfe00) == 0xfc00 // unique-local (fd00:ec2::254: AWS metadata)
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00; // multicast
    !refused
}

/// Which addresses may be fetched: public ones, and those in `allow`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allow: Vec<Cidr>,
}

impl AddressPolicy {
    pub fn new(allow: Vec<Cidr>) -> AddressPolicy {
        AddressPolicy { allow }
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.allow.iter().any(|c| c.contains(ip))
    }
}

/// The resolver error when every address a name resolves to is refused.
#[derive(Debug, thiserror::Error)]
#[error("not a public address")]
struct RefusedAddress;

/// A `reqwest` resolver that drops the addresses the policy refuses, so the
/// client connects only to addresses that were checked.
struct PolicyResolver {
    policy: Arc<AddressPolicy>,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            let host = name.as_str();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
            let allowed: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| policy.allows(a.ip()))
                .collect();
            if allowed.len() < all.len() {
                debug!(host, resolved = ?all, allowed = ?allowed, "fetch: refused resolved addresses");
            }
            if allowed.is_empty() && !all.is_empty() {
                return Err(Box::new(RefusedAddress) as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// Whether `e`, or anything in its source chain, is the resolver's refusal.
fn is_refusal(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<RefusedAddress>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// An error and its sources, for the debug log.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        out.push_str(": ");
        out.push_str(&err.to_string());
        cur = err.source();
    }
    out
}

/// An HTTP client for segment URLs.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
    max_bytes: usize,
}

impl Fetcher {
    /// `accept_invalid_certs` trusts self-signed certificates, as go-livepeer's
    /// orchestrators serve segments over TLS with a self-signed certificate;
    /// it says nothing about which addresses may be fetched, which `policy`
    /// decides.
    pub fn new(
        timeout: Duration,
        max_bytes: usize,
        accept_invalid_certs: bool,
        policy: AddressPolicy,
    ) -> Self {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .danger_accept_invalid_certs(accept_invalid_certs)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(PolicyResolver {
                policy: Arc::clone(&policy),
            }))
            .build()
            .expect("HTTP client builds with static settings");
        Fetcher {
            client,
            policy,
            max_bytes,
        }
    }

    pub async fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let result = self.fetch(url).await;
        if let Err(e) = &result {
            debug!(url, error = %e, "fetch: failed");
        }
        result
    }

    async fn fetch(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| FetchError::BadUrl)?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(FetchError::BadUrl);
        }
        // Literal IP hosts never reach the resolver: check them here.
        // (The URL parser has already normalised them: `[::1]`, `0x7f.1`.)
        let host = parsed.host_str().ok_or(FetchError::BadUrl)?;
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .parse::<IpAddr>();
        if let Ok(ip) = literal {
            if !self.policy.allows(ip) {
                debug!(url, %ip, "fetch: refused address");
                return Err(FetchError::Refused);
            }
        }
        let failed = |e: reqwest::Error| {
            if is_refusal(&e) {
                FetchError::Refused
            } else {
                debug!(url, error = %chain(&e), "fetch: request failed");
                FetchError::Failed { status: None }
            }
        };
        let response = self.client.get(parsed).send().await.map_err(failed)?;
        if !response.status().is_success() {
            debug!(
                url,
                status = response.status().as_u16(),
                "fetch: HTTP status"
            );
            return Err(FetchError::Failed {
                status: Some(response.status().as_u16()),
            });
        }
        let too_large = || FetchError::TooLarge {
            limit: self.max_bytes,
        };
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(failed)?;
            if body.len() + chunk.len() > self.max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refuses_every_non_public_range() {
        let refused = [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.100.100.200",
            "100.127.255.255",
            "127.0.0.1",
            "127.1.2.3",
            "169.254.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.192",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.1.2.3",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "100::1",
            "2001::1",
            "2001:db8::1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
            "3fff::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ];
        for a in refused {
            assert!(!is_public(ip(a)), "{a} taken as public");
            assert!(!AddressPolicy::default().allows(ip(a)), "{a} allowed");
        }
        let public = [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.0.1.1",
            "192.169.0.1",
            "198.20.0.1",
            "223.255.255.255",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:4860:4860::8888",
            "2606:4700:4700::1111",
            "4000::1",
        ];
        for a in public {
            assert!(is_public(ip(a)), "{a} taken as non-public");
        }
    }

    #[test]
    fn parses_cidrs() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.9.8.7")));
        assert!(c.contains(ip("::ffff:10.9.8.7")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(!c.contains(ip("::1")));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(one, "127.0.0.1/32".parse().unwrap());
        assert!(one.contains(ip("127.0.0.1")));
        assert!(!one.contains(ip("127.0.0.2")));
        let v6: Cidr = " fd00::/8 ".parse().unwrap();
        assert!(v6.contains(ip("fd00:ec2::254")));
        assert!(!v6.contains(ip("fe80::1")));
        let mapped: Cidr = "::ffff:192.168.0.0/112".parse().unwrap();
        assert_eq!(mapped, "192.168.0.0/16".parse().unwrap());
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("127.0.0.1")) && !all.contains(ip("::1")));
        assert!("::/0".parse::<Cidr>().unwrap().contains(ip("fe80::1")));
        assert_eq!(Cidr::host(ip("::ffff:1.2.3.4")).to_string(), "1.2.3.4/32");
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0/8",
            "example.com/8",
            "10.0.0.0/8/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} parsed");
        }
        let allow = AddressPolicy::new(vec!["169.254.169.254".parse().unwrap()]);
        assert!(allow.allows(ip("169.254.169.254")));
        assert!(allow.allows(ip("::ffff:169.254.169.254")));
        assert!(!allow.allows(ip("169.254.169.253")));
    }

    /// An HTTP server on `bind` answering every request with `head` (plus
    /// "hi" as the body), counting the connections it gets.
    async fn server_on(bind: &str, head: String) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let head = head.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(b"hi").await;
                });
            }
        });
        (addr, hits)
    }

    async fn server(head: String) -> (SocketAddr, Arc<AtomicUsize>) {
        server_on("127.0.0.1:0", head).await
    }

    fn fetcher(allow: &[&str]) -> Fetcher {
        let allow = allow.iter().map(|c| c.parse().unwrap()).collect();
        Fetcher::new(
            Duration::from_secs(5),
            1 << 20,
            false,
            AddressPolicy::new(allow),
        )
    }

    const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n";

    #[tokio::test]
    async fn refuses_loopback_by_literal_and_by_name() {
        let (addr, hits) = server(OK.into()).await;
        let port = addr.port();
        let f = fetcher(&[]);
        for url in [
            format!("http://127.0.0.1:{port}/seg.ts"),
            format!("http://[::ffff:127.0.0.1]:{port}/seg.ts"),
            format!("http://0x7f.1:{port}/seg.ts"),
            format!("http://localhost:{port}/seg.ts"),
            "http://169.254.169.254/latest/meta-data/".to_string(),
            "http://10.1.2.3/seg.ts".to_string(),
            "http://[fd00:ec2::254]/".to_string(),
        ] {
            let e = f.get(&url).await.expect_err(&url);
            assert!(matches!(e, FetchError::Refused), "{url}: {e:?}");
            let text = e.to_string();
            assert_eq!(text, "segment URL refused: not a public address");
        }
        assert_eq!(hits.load(Ordering::SeqCst), 0, "a refused URL was fetched");
        assert!(matches!(f.get("ftp://x/y").await, Err(FetchError::BadUrl)));
    }

    #[tokio::test]
    async fn the_allow_list_lets_loopback_through() {
        let (addr, hits) = server(OK.into()).await;
        let f = fetcher(&["127.0.0.1/32"]);
        let body = f.get(&format!("http://{addr}/seg.ts")).await.unwrap();
        assert_eq!(body, b"hi");
        let body = f
            .get(&format!("http://localhost:{}/seg.ts", addr.port()))
            .await
            .unwrap();
        assert_eq!(body, b"hi");
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn redirects_are_not_followed_and_statuses_not_shown() {
        let (target, target_hits) = server(OK.into()).await;
        // The redirector is allowed (127.0.0.2 is loopback too); its target is not.
        let (r2, r2_hits) = server_on(
            "127.0.0.2:0",
            format!(
                "HTTP/1.1 302 Found\r\nLocation: http://{target}/seg.ts\r\n\
                 Content-Length: 2\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        let f = fetcher(&["127.0.0.2/32"]);
        let e = f.get(&format!("http://{r2}/seg.ts")).await.unwrap_err();
        assert!(
            matches!(e, FetchError::Failed { status: Some(302) }),
            "{e:?}"
        );
        let text = e.to_string();
        assert_eq!(text, "segment fetch failed");
        assert!(!text.contains("302") && !text.contains("127.0.0"), "{text}");
        assert_eq!(r2_hits.load(Ordering::SeqCst), 1);
        assert_eq!(target_hits.load(Ordering::SeqCst), 0, "redirect followed");
    }
}
