//! The demo's RED summary, computed from the sidecars' own `/metrics` (scraped and parsed
//! here, the way Prometheus would), so it shows what the proxy measured: requests and 5xx from
//! `http_server_request_duration_seconds_count`, p50/p99 from its buckets with Prometheus'
//! `histogram_quantile` interpolation.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::traffic::{Counts, Sent};

const SERVER_DURATION: &str = "http_server_request_duration_seconds";

/// One line of the summary: a service's sidecar in one direction.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub service: String,
    pub direction: String,
    pub requests: u64,
    pub errors: u64,
    /// Requests per second over the traffic's duration.
    pub rate: f64,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

impl Row {
    pub fn error_ratio(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// The demo's result: what the sidecars measured, next to what the generator sent.
#[derive(Debug, Clone)]
pub struct Summary {
    pub rows: Vec<Row>,
    pub sent: Sent,
    pub duration: Duration,
    /// Whether the sidecars were configured for mTLS with each other.
    pub mtls: bool,
    /// Successful inbound TLS handshakes the sidecars counted: evidence that mTLS was used.
    pub tls_handshakes_ok: u64,
}

impl Summary {
    pub fn row(&self, service: &str, direction: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.service == service && r.direction == direction)
    }

    /// Whether every (service, direction) the generator sent through was counted the same by
    /// the sidecar (requests and 5xx).
    pub fn agrees_with_traffic(&self) -> bool {
        self.sent.by_service.iter().all(|((svc, dir), c)| {
            self.row(svc, dir)
                .is_some_and(|r| r.requests == c.requests && r.errors == c.errors)
        })
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.sent.total();
        writeln!(
            f,
            "RED summary from the sidecars' /metrics ({} requests in {:.1}s, {}):",
            total.requests,
            self.duration.as_secs_f64(),
            if self.mtls {
                "mTLS between sidecars"
            } else {
                "plain HTTP between sidecars"
            }
        )?;
        writeln!(
            f,
            "{:<12} {:<9} {:>9} {:>8} {:>7} {:>7} {:>10} {:>10}",
            "service", "direction", "requests", "req/s", "errors", "error%", "p50", "p99"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<12} {:<9} {:>9} {:>8.1} {:>7} {:>6.2}% {:>10} {:>10}",
                r.service,
                r.direction,
                r.requests,
                r.rate,
                r.errors,
                r.error_ratio() * 100.0,
                fmt_seconds(r.p50),
                fmt_seconds(r.p99)
            )?;
        }
        if self.sent.transport_failures > 0 {
            writeln!(
                f,
                "({} requests got no answer)",
                self.sent.transport_failures
            )?;
        }
        Ok(())
    }
}

fn fmt_seconds(s: Option<f64>) -> String {
    match s {
        None => "-".into(),
        Some(s) if s < 1.0 => format!("{:.2}ms", s * 1000.0),
        Some(s) => format!("{s:.2}s"),
    }
}

/// Scrape every sidecar until its counts match what was sent (a request is recorded when its
/// response body ended, a moment after the client saw the end) or `settle` elapsed, then
/// build the rows.
pub async fn collect(
    admins: &BTreeMap<&'static str, SocketAddr>,
    sent: Sent,
    duration: Duration,
    mtls: bool,
    settle: Duration,
) -> anyhow::Result<Summary> {
    let deadline = tokio::time::Instant::now() + settle;
    loop {
        let mut rows = Vec::new();
        let mut tls_handshakes_ok = 0.0;
        for (service, admin) in admins {
            let text = scrape(*admin).await?;
            rows.extend(rows_for(service, &text, duration));
            tls_handshakes_ok += parse(&text)
                .iter()
                .filter(|s| {
                    s.name == "tracseq_proxy_tls_handshakes_total"
                        && s.labels.get("direction").map(String::as_str) == Some("inbound")
                        && s.labels.get("result").map(String::as_str) == Some("ok")
                })
                .map(|s| s.value)
                .sum::<f64>();
        }
        let summary = Summary {
            rows,
            sent: sent.clone(),
            duration,
            mtls,
            tls_handshakes_ok: tls_handshakes_ok as u64,
        };
        if summary.agrees_with_traffic() || tokio::time::Instant::now() >= deadline {
            return Ok(summary);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scrape(admin: SocketAddr) -> anyhow::Result<String> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: http::Uri = format!("http://{admin}/metrics").parse()?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
        .await
        .context("scraping /metrics timed out")??;
    anyhow::ensure!(
        resp.status().is_success(),
        "/metrics answered {}",
        resp.status()
    );
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// A parsed sample line of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parse the Prometheus text format (comments skipped; label values may hold escapes).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

/// One sample line of the Prometheus text format; `None` if it does not parse.
pub fn parse_line(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (
                &line[..open],
                parse_labels(&line[open + 1..close])?,
                &line[close + 1..],
            )
        }
        None => {
            let (n, r) = line.split_once(' ')?;
            (n, BTreeMap::new(), r)
        }
    };
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.trim().to_string(),
        labels,
        value,
    })
}

fn parse_labels(s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(',' | ' ')) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next()? != '"' {
            return None;
        }
        let mut val = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => val.push('\n'),
                    c => val.push(c),
                },
                '"' => break,
                c => val.push(c),
            }
        }
        out.insert(key.trim().to_string(), val);
    }
}

/// The rows of one sidecar, one per direction it served.
pub fn rows_for(service: &str, text: &str, duration: Duration) -> Vec<Row> {
    let count_name = format!("{SERVER_DURATION}_count");
    let bucket_name = format!("{SERVER_DURATION}_bucket");
    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    let mut buckets: BTreeMap<String, BTreeMap<u64, (f64, f64)>> = BTreeMap::new();
    for s in parse(text) {
        let Some(direction) = s.labels.get("direction").cloned() else {
            continue;
        };
        if s.name == count_name {
            let c = counts.entry(direction).or_default();
            c.requests += s.value as u64;
            if s.labels
                .get("http_response_status_code")
                .is_some_and(|code| code.starts_with('5'))
            {
                c.errors += s.value as u64;
            }
        } else if s.name == bucket_name {
            let Some(le) = s.labels.get("le").and_then(|le| parse_le(le)) else {
                continue;
            };
            // Keyed by the bound's bits: f64 is not Ord, positive floats sort like their bits.
            let e = buckets
                .entry(direction)
                .or_default()
                .entry(le.to_bits())
                .or_insert((le, 0.0));
            e.1 += s.value;
        }
    }
    counts
        .into_iter()
        .filter(|(_, c)| c.requests > 0)
        .map(|(direction, c)| {
            let b: Vec<(f64, f64)> = buckets
                .get(&direction)
                .map(|m| m.values().copied().collect())
                .unwrap_or_default();
            Row {
                service: service.to_string(),
                rate: c.requests as f64 / duration.as_secs_f64().max(1e-9),
                requests: c.requests,
                errors: c.errors,
                p50: histogram_quantile(0.5, &b),
                p99: histogram_quantile(0.99, &b),
                direction,
            }
        })
        .collect()
}

fn parse_le(le: &str) -> Option<f64> {
    match le {
        "+Inf" => Some(f64::INFINITY),
        v => v.parse().ok(),
    }
}

/// Prometheus' `histogram_quantile` on cumulative `(upper bound, count)` buckets sorted by
/// bound: linear interpolation inside the bucket holding the rank; the `+Inf` bucket answers
/// with the highest finite bound.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last().filter(|(le, _)| le.is_infinite())?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let in_bucket = count - prev.1;
            if in_bucket <= 0.0 {
                return Some(le);
            }
            return Some(prev.0 + (le - prev.0) * (rank - prev.1) / in_bucket);
        }
        prev = (le, count);
    }
    Some(prev.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_like_prometheus() {
        let b = [(0.01, 30.0), (0.02, 60.0), (f64::INFINITY, 60.0)];
        assert_eq!(histogram_quantile(0.5, &b), Some(0.01));
        let q = histogram_quantile(0.75, &b).expect("q");
        assert!((q - 0.015).abs() < 1e-12);
        assert_eq!(histogram_quantile(0.5, &[(f64::INFINITY, 0.0)]), None);
        assert_eq!(
            histogram_quantile(0.99, &[(1.0, 0.0), (f64::INFINITY, 5.0)]),
            Some(1.0)
        );
    }

    #[test]
    fn rows_count_requests_errors_and_percentiles_per_direction() {
        let text = "# TYPE x histogram\n\
            http_server_request_duration_seconds_count{direction=\"inbound\",http_response_status_code=\"200\"} 8\n\
            http_server_request_duration_seconds_count{direction=\"inbound\",http_response_status_code=\"500\"} 2\n\
            http_server_request_duration_seconds_bucket{direction=\"inbound\",http_response_status_code=\"200\",le=\"0.01\"} 8\n\
            http_server_request_duration_seconds_bucket{direction=\"inbound\",http_response_status_code=\"200\",le=\"+Inf\"} 8\n\
            http_server_request_duration_seconds_bucket{direction=\"inbound\",http_response_status_code=\"500\",le=\"0.01\"} 1\n\
            http_server_request_duration_seconds_bucket{direction=\"inbound\",http_response_status_code=\"500\",le=\"+Inf\"} 2\n";
        let rows = rows_for("samples", text, Duration::from_secs(2));
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(
            (r.requests, r.errors, r.direction.as_str()),
            (10, 2, "inbound")
        );
        assert!((r.rate - 5.0).abs() < 1e-9);
        assert!(r.p50.is_some_and(|p| p > 0.0 && p <= 0.01));
        assert_eq!(r.p99, Some(0.01));
    }
}
