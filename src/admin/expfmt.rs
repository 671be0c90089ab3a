//! prometheus-client writes OpenMetrics text. Prometheus also reads the classic text format
//! (0.0.4), which is what most scrapers ask for; this turns one into the other: counter
//! families are named with their `_total` sample name, `info` becomes a gauge, `# UNIT` and
//! `# EOF` go, and exemplars (an OpenMetrics-only feature) are removed.

pub fn openmetrics_to_prometheus(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut pending_help: Option<(&str, &str)> = None;
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            pending_help = Some((name, help));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, ty) = match ty {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" | "stateset" | "gaugehistogram" => (name.to_string(), "untyped"),
                other => (name.to_string(), other),
            };
            if let Some((hname, help)) = pending_help.take() {
                if hname == rest.split(' ').next().unwrap_or("") {
                    out.push_str("# HELP ");
                    out.push_str(&name);
                    out.push(' ');
                    out.push_str(help);
                    out.push('\n');
                }
            }
            out.push_str("# TYPE ");
            out.push_str(&name);
            out.push(' ');
            out.push_str(ty);
            out.push('\n');
            continue;
        }
        // A sample line; an exemplar follows ` # {` and is not part of the classic format.
        match line.find(" # {") {
            Some(i) => out.push_str(&line[..i]),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_counters_info_and_exemplars() {
        let om = "# HELP reqs Requests.\n# TYPE reqs counter\nreqs_total{a=\"b\"} 3\n# HELP d Durations.\n# TYPE d histogram\n# UNIT d seconds\nd_bucket{le=\"0.1\"} 1 # {trace_id=\"ab\"} 0.05\nd_sum 0.05\nd_count 1\n# EOF\n";
        let p = openmetrics_to_prometheus(om);
        assert_eq!(
            p,
            "# HELP reqs_total Requests.\n# TYPE reqs_total counter\nreqs_total{a=\"b\"} 3\n# HELP d Durations.\n# TYPE d histogram\nd_bucket{le=\"0.1\"} 1\nd_sum 0.05\nd_count 1\n"
        );
    }
}
