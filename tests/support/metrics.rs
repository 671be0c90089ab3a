//! `/metrics` scraped and parsed (with the demo's text-format parser, strictly: a line that
//! does not parse fails the test).

use std::net::SocketAddr;

use tracseq_proxy::demo::parse_sample as parse_line;
pub use tracseq_proxy::demo::Sample;

#[derive(Debug, Clone)]
pub struct Metrics {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Metrics {
    pub async fn scrape(admin: SocketAddr) -> Metrics {
        let resp = super::get(&format!("http://{admin}/metrics"))
            .await
            .expect("scrape /metrics");
        assert_eq!(resp.status, 200, "scrape status");
        Self::parse(&resp.text())
    }

    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            samples.push(
                parse_line(line).unwrap_or_else(|| panic!("unparsable metrics line: {line}")),
            );
        }
        Metrics {
            text: text.to_string(),
            samples,
        }
    }

    /// Samples of `name` whose labels include every `(k, v)` of `filter`.
    pub fn select<'a>(
        &'a self,
        name: &'a str,
        filter: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// Sum of the matching samples (0 when none).
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.select(name, filter).map(|s| s.value).sum()
    }

    /// Whether a family of this name has a `# TYPE` line.
    pub fn has_family(&self, name: &str) -> bool {
        self.text
            .lines()
            .any(|l| l.starts_with(&format!("# TYPE {name} ")))
    }
}
