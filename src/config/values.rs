//! The typed values of the config that need more than a number: rates, identity patterns,
//! peers and route templates, each with a `FromStr` whose error names what was expected.

use std::str::FromStr;
use std::time::Duration;

/// A rate: `count` requests per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    /// The `N/s` text of the IETF RateLimit-Policy `w` (window seconds) and `q` (quota).
    pub fn window_secs(&self) -> u64 {
        self.per.as_secs().max(1)
    }
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (n, unit) = s
            .split_once('/')
            .ok_or_else(|| format!("invalid rate \"{s}\" (expected N/s, N/m or N/h)"))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("invalid rate \"{s}\": \"{n}\" is not a whole number"))?;
        if count == 0 {
            return Err(format!("invalid rate \"{s}\": must be at least 1"));
        }
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            u => {
                return Err(format!(
                    "invalid rate \"{s}\": unit \"{u}\" is not s, m or h"
                ))
            }
        };
        Ok(Rate { count, per })
    }
}

/// An `--allow-identity` pattern: exact, or a prefix when it ends in `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityPattern {
    Exact(String),
    Prefix(String),
}

impl IdentityPattern {
    pub fn matches(&self, id: &str) -> bool {
        match self {
            Self::Exact(e) => e == id,
            Self::Prefix(p) => id.starts_with(p.as_str()),
        }
    }
}

impl FromStr for IdentityPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty identity".into());
        }
        match s.strip_suffix('*') {
            Some(p) if p.contains('*') => Err(format!("\"{s}\": `*` is allowed only at the end")),
            Some(p) => Ok(Self::Prefix(p.to_string())),
            None if s.contains('*') => Err(format!("\"{s}\": `*` is allowed only at the end")),
            None => Ok(Self::Exact(s.to_string())),
        }
    }
}

/// A `--peer NAME=HOST:PORT[#IDENTITY]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub identity: Option<String>,
}

impl FromStr for Peer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid peer \"{s}\" (expected NAME=HOST:PORT[#IDENTITY])");
        let (name, rest) = s.split_once('=').ok_or_else(bad)?;
        let (addr, identity) = match rest.split_once('#') {
            Some((a, id)) if !id.is_empty() => (a, Some(id.to_string())),
            Some(_) => return Err(bad()),
            None => (rest, None),
        };
        let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad())?;
        if name.is_empty() || host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(Peer {
            name: name.to_ascii_lowercase(),
            host: host.to_string(),
            port,
            identity,
        })
    }
}

/// A `/api/samples/{id}` route template. `{name}` matches one path segment; a final `{*name}`
/// matches the rest. The template text itself is the `http_route` label (bounded: it comes
/// from the config, never from a request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTemplate {
    pub template: &'static str,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
    Rest,
}

impl RouteTemplate {
    pub fn matches(&self, path: &str) -> bool {
        let mut parts = path.trim_start_matches('/').split('/');
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Rest => return i + 1 == self.segments.len(),
                Segment::Literal(l) => match parts.next() {
                    Some(p) if p == l => {}
                    _ => return false,
                },
                Segment::Param => match parts.next() {
                    Some(p) if !p.is_empty() => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }
}

impl FromStr for RouteTemplate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if !s.starts_with('/') {
            return Err(format!("route \"{s}\" must start with /"));
        }
        let raw: Vec<&str> = s.trim_start_matches('/').split('/').collect();
        let mut segments = Vec::with_capacity(raw.len());
        for (i, part) in raw.iter().enumerate() {
            let seg = if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}'))
            {
                if inner.starts_with('*') {
                    if i + 1 != raw.len() {
                        return Err(format!("route \"{s}\": {{*...}} must be the last segment"));
                    }
                    Segment::Rest
                } else if inner.is_empty() {
                    return Err(format!("route \"{s}\": empty parameter name"));
                } else {
                    Segment::Param
                }
            } else if part.contains('{') || part.contains('}') {
                return Err(format!(
                    "route \"{s}\": a parameter must be a whole segment"
                ));
            } else {
                Segment::Literal((*part).to_string())
            };
            segments.push(seg);
        }
        // Templates live for the whole process; leaking them gives `&'static str` labels with
        // no per-request allocation or reference counting.
        let template: &'static str = Box::leak(s.to_string().into_boxed_str());
        Ok(RouteTemplate { template, segments })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!("10/s".parse::<Rate>().map(|r| r.count), Ok(10));
        assert_eq!(
            "5/m".parse::<Rate>().map(|r| r.per),
            Ok(Duration::from_secs(60))
        );
        assert!("0/s".parse::<Rate>().is_err());
        assert!("10/d".parse::<Rate>().is_err());
        assert!("ten/s".parse::<Rate>().is_err());
    }

    #[test]
    fn peers() {
        let p: Peer = "orders=orders-sidecar:8443#spiffe://tracseq.local/orders"
            .parse()
            .expect("valid");
        assert_eq!(p.host, "orders-sidecar");
        assert_eq!(p.port, 8443);
        assert_eq!(p.identity.as_deref(), Some("spiffe://tracseq.local/orders"));
        assert!("orders".parse::<Peer>().is_err());
        assert!("orders=host".parse::<Peer>().is_err());
        assert!("orders=host:0".parse::<Peer>().is_err());
        let v6: Peer = "x=[::1]:9".parse().expect("v6");
        assert_eq!(v6.host, "::1");
    }

    #[test]
    fn routes() {
        let r: RouteTemplate = "/api/samples/{id}".parse().expect("valid");
        assert!(r.matches("/api/samples/42"));
        assert!(!r.matches("/api/samples/42/x"));
        assert!(!r.matches("/api/samples/"));
        assert!(!r.matches("/api/other/42"));
        let rest: RouteTemplate = "/static/{*path}".parse().expect("valid");
        assert!(rest.matches("/static/a/b/c"));
        assert!("api".parse::<RouteTemplate>().is_err());
        assert!("/a/{*x}/b".parse::<RouteTemplate>().is_err());
        assert!("/a/x{y}".parse::<RouteTemplate>().is_err());
    }

    #[test]
    fn identity_patterns() {
        let p: IdentityPattern = "spiffe://tracseq.local/*".parse().expect("valid");
        assert!(p.matches("spiffe://tracseq.local/orders"));
        assert!(!p.matches("spiffe://other/orders"));
        assert!("a*b".parse::<IdentityPattern>().is_err());
    }
}
