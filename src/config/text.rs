//! Parsers from one option's text to a scalar value; each error says what was expected.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration \"{s}\" ({e}; expected e.g. 250ms, 30s)"))
}

pub(super) fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("invalid address \"{s}\" (expected IP:PORT, e.g. 0.0.0.0:8443)"))
}

pub(super) fn boolean(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("invalid boolean \"{s}\"")),
    }
}

pub(super) fn number<T: FromStr>(what: &'static str) -> impl Fn(&str) -> Result<T, String> {
    move |s| {
        s.trim()
            .parse()
            .map_err(|_| format!("invalid {what} \"{s}\""))
    }
}

pub(super) fn upstream(s: &str) -> Result<http::uri::Authority, String> {
    let uri: http::Uri = s
        .parse()
        .map_err(|e| format!("invalid URL \"{s}\": {e} (expected http://host:port)"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(format!(
                "unsupported scheme \"{other}\" in \"{s}\" (expected http://host:port)"
            ))
        }
        None => return Err(format!("\"{s}\" has no scheme (expected http://host:port)")),
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "\"{s}\" must not have a path (expected http://host:port)"
        ));
    }
    let auth = uri
        .authority()
        .ok_or_else(|| format!("\"{s}\" has no host (expected http://host:port)"))?;
    if auth.as_str().contains('@') {
        return Err(format!("\"{s}\" must not carry credentials"));
    }
    if auth.port_u16().is_some() {
        Ok(auth.clone())
    } else {
        format!("{}:80", auth.host())
            .parse()
            .map_err(|e| format!("invalid host in \"{s}\": {e}"))
    }
}

pub(super) fn backoff(s: &str) -> Result<(Duration, Duration), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("invalid backoff \"{s}\" (expected MIN..MAX, e.g. 1s..60s)"))?;
    let (min, max) = (duration(a)?, duration(b)?);
    if min.is_zero() || min > max {
        return Err(format!("invalid backoff \"{s}\": need 0 < MIN <= MAX"));
    }
    Ok((min, max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        assert_eq!(
            upstream("http://127.0.0.1:8080").map(|a| a.to_string()),
            Ok("127.0.0.1:8080".into())
        );
        assert_eq!(
            upstream("http://app").map(|a| a.to_string()),
            Ok("app:80".into())
        );
        assert!(upstream("https://app:1").is_err());
        assert!(upstream("127.0.0.1:8080").is_err());
        assert!(upstream("http://app:1/path").is_err());
    }
}
