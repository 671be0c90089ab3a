//! A small parser for the Prometheus text format served by `/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

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

fn parse_line(line: &str) -> Option<Sample> {
    let (name_labels, rest) = match line.find('{') {
        Some(_) => {
            let end = line.rfind('}')?;
            (&line[..=end], line[end + 1..].trim())
        }
        None => {
            let (n, r) = line.split_once(' ')?;
            (n, r.trim())
        }
    };
    let value_str = rest.split_whitespace().next()?;
    let value = match value_str {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match name_labels.find('{') {
        None => (name_labels.to_string(), BTreeMap::new()),
        Some(i) => {
            let inner = &name_labels[i + 1..name_labels.len() - 1];
            (name_labels[..i].to_string(), parse_labels(inner)?)
        }
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

fn parse_labels(s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek() == Some(&',') || chars.peek() == Some(&' ') {
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
