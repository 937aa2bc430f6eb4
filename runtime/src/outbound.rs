//! Outbound HTTP to addresses clients choose (their webhook URLs, recipient-list import URLs),
//! without letting them reach what only datamailer can reach (SSRF).
//!
//! A request is refused when its host is, or resolves only to, a loopback, private,
//! link-local (the cloud metadata service at 169.254.169.254 and fd00:ec2::254 included),
//! carrier-grade NAT, multicast, reserved or unspecified address — unless the host is named in
//! `DATAMAILER_OUTBOUND_ALLOW_HOSTS` (comma-separated host names or IP addresses). The check
//! is done in the client's DNS resolver on the addresses it then connects to, so a name that
//! resolves differently the second time (DNS rebinding) gains nothing; literal IP hosts, which
//! skip the resolver, are checked before the request. Redirects are not followed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

/// Hosts (names or addresses) exempt from the address rules.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    allow: Vec<String>,
}

impl OutboundPolicy {
    /// From `DATAMAILER_OUTBOUND_ALLOW_HOSTS`' value.
    pub fn from_allow_list(value: &str) -> Self {
        Self {
            allow: value
                .split(',')
                .map(|h| h.trim().trim_matches(['[', ']']).to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
        }
    }

    pub fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
        self.allow.contains(&host)
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|a| a.parse::<IpAddr>() == Ok(ip))
    }

    /// Refuses a URL without any network access: not http(s), no host, or a host that is a
    /// literal forbidden address (or `localhost`) not named in the allow list. What a name
    /// resolves to is checked when a request is made (the resolver of [`OutboundClient`]).
    pub fn check_url(&self, url: &str) -> anyhow::Result<reqwest::Url> {
        let parsed = reqwest::Url::parse(url).with_context(|| format!("not a URL: {url}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            anyhow::bail!("refused: only http and https URLs are allowed");
        }
        let host = parsed.host_str().context("the URL has no host")?;
        if self.allows_host(host) {
            return Ok(parsed);
        }
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            if let Some(why) = forbidden_reason(ip) {
                anyhow::bail!("refused: {host} is a {why} address");
            }
        }
        let lower = host.to_ascii_lowercase();
        if lower == "localhost" || lower.ends_with(".localhost") {
            anyhow::bail!("refused: {host} is a loopback address");
        }
        Ok(parsed)
    }
}

/// Why an address may not be reached, or `None` when it is public.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_reason(v4);
            }
            let seg = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if seg[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if seg[0] & 0xfe00 == 0xfc00 {
                // Unique local, which also holds the EC2 metadata address fd00:ec2::254.
                Some("private")
            } else if seg[0] == 0x2001 && seg[1] == 0x0db8 {
                Some("reserved")
            } else if seg[0] == 0x0064 && seg[1] == 0xff9b {
                // NAT64: the IPv4 address it embeds decides.
                let v4 = Ipv4Addr::new(
                    (seg[6] >> 8) as u8,
                    seg[6] as u8,
                    (seg[7] >> 8) as u8,
                    seg[7] as u8,
                );
                v4_reason(v4)
            } else {
                None
            }
        }
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_broadcast() || ip.is_multicast() {
        Some("multicast")
    } else if o[0] == 100 && (64..128).contains(&o[1]) {
        Some("carrier-grade NAT")
    } else if o[0] >= 240
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || (o[0] == 198 && (18..20).contains(&o[1]))
        || ip.is_documentation()
    {
        Some("reserved")
    } else {
        None
    }
}

/// The resolver that drops forbidden addresses (unless the host is allowed).
struct GuardedResolver {
    policy: OutboundPolicy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if policy.allows_host(&host) {
                return Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs);
            }
            let allowed: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| policy.allows_ip(a.ip()) || forbidden_reason(a.ip()).is_none())
                .collect();
            if allowed.is_empty() {
                let why = addrs
                    .first()
                    .and_then(|a| forbidden_reason(a.ip()))
                    .unwrap_or("no address");
                return Err(format!("refused: {host} resolves only to {why} addresses").into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// An HTTP client that keeps to the policy. Build it once per process.
#[derive(Clone)]
pub struct OutboundClient {
    http: reqwest::Client,
    policy: OutboundPolicy,
}

/// How much of a POST's answer is read.
const ANSWER_BYTES: usize = 2048;

/// What a POST got back.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// The start of the response body (for the record).
    pub body: String,
}

impl OutboundClient {
    pub fn new(policy: OutboundPolicy) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
            }))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("datamailer/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the outbound HTTP client")?;
        Ok(Self { http, policy })
    }

    /// Refuses a URL before any request: bad scheme, or a literal forbidden address
    /// ([`OutboundPolicy::check_url`]).
    pub fn check_url(&self, url: &str) -> anyhow::Result<reqwest::Url> {
        self.policy.check_url(url)
    }

    pub fn policy(&self) -> &OutboundPolicy {
        &self.policy
    }

    /// POSTs `body` (JSON) with `headers`, within `timeout`.
    pub async fn post_json(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> anyhow::Result<Answer> {
        let url = self.check_url(url)?;
        let mut req = self
            .http
            .post(url)
            .timeout(timeout)
            .header("Content-Type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let mut resp = req.send().await.map_err(describe)?;
        let status = resp.status().as_u16();
        // Only the start of the body is kept; a receiver answering megabytes costs us no more.
        let mut head = Vec::new();
        while head.len() < ANSWER_BYTES {
            match resp.chunk().await {
                Ok(Some(chunk)) => head.extend_from_slice(&chunk),
                _ => break,
            }
        }
        head.truncate(ANSWER_BYTES);
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&head).chars().take(500).collect(),
        })
    }

    /// GETs `url`, reading at most `max_bytes` (more is an error), within `timeout` overall.
    pub async fn get_limited(
        &self,
        url: &str,
        max_bytes: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<u8>> {
        let url = self.check_url(url)?;
        let fetch = async {
            let mut resp = self.http.get(url).send().await.map_err(describe)?;
            let status = resp.status();
            if !status.is_success() {
                anyhow::bail!("fetch_failed: HTTP {}", status.as_u16());
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(describe)? {
                if body.len() + chunk.len() > max_bytes {
                    anyhow::bail!("fetch_failed: response_too_large");
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        };
        tokio::time::timeout(timeout, fetch)
            .await
            .map_err(|_| anyhow::anyhow!("fetch_failed: timed out after {timeout:?}"))?
    }
}

/// reqwest hides the resolver's "refused" inside its error chain; bring it to the front.
fn describe(e: reqwest::Error) -> anyhow::Error {
    let mut cause: Option<&dyn std::error::Error> = Some(&e);
    while let Some(c) = cause {
        let text = c.to_string();
        if text.starts_with("refused:") {
            return anyhow::anyhow!(text);
        }
        cause = c.source();
    }
    anyhow::Error::new(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_addresses() {
        for (ip, why) in [
            ("127.0.0.1", Some("loopback")),
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("192.168.1.1", Some("private")),
            ("169.254.169.254", Some("link-local")),
            ("100.64.0.1", Some("carrier-grade NAT")),
            ("0.0.0.0", Some("unspecified")),
            ("224.0.0.1", Some("multicast")),
            ("240.0.0.1", Some("reserved")),
            ("::1", Some("loopback")),
            ("fe80::1", Some("link-local")),
            ("fd00:ec2::254", Some("private")),
            ("::ffff:127.0.0.1", Some("loopback")),
            ("64:ff9b::a9fe:a9fe", Some("link-local")),
            ("93.184.216.34", None),
            ("2606:4700::1111", None),
        ] {
            assert_eq!(forbidden_reason(ip.parse().unwrap()), why, "{ip}");
        }
    }

    #[tokio::test]
    async fn refuses_literal_and_resolved_private_hosts_unless_allowed() {
        let client = OutboundClient::new(OutboundPolicy::default()).unwrap();
        let err = client
            .post_json(
                "http://169.254.169.254/latest/meta-data",
                &[],
                vec![],
                Duration::from_secs(1),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("link-local"), "{err}");
        let err = client
            .post_json(
                "http://localhost:9/hook",
                &[],
                vec![],
                Duration::from_secs(1),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with("refused:"), "{err}");
        assert!(client.check_url("file:///etc/passwd").is_err());

        // Allowed by name: the request is made (and fails only because nothing listens).
        let allowed =
            OutboundClient::new(OutboundPolicy::from_allow_list("localhost, 127.0.0.1")).unwrap();
        let err = allowed
            .post_json(
                "http://localhost:9/hook",
                &[],
                vec![],
                Duration::from_secs(1),
            )
            .await
            .unwrap_err();
        assert!(!err.to_string().starts_with("refused:"), "{err}");
        assert!(allowed.check_url("http://127.0.0.1:9/x").is_ok());
    }
}
