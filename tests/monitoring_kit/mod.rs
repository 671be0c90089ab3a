//! Shared by the monitoring tests: paths of the shipped files, running tools, and reading the
//! Grafana dashboards' queries.
#![allow(dead_code)]

pub mod prometheus;

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Run a tool, fail with its output unless it exits 0; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

pub fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(repo(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no *.{ext} in {dir}");
    v
}

/// Every panel query of the shipped dashboards, with its panel title.
pub fn dashboard_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in files("monitoring/grafana/dashboards", "json") {
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).expect("read dashboard"))
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let panels = dash["panels"].as_array().expect("panels");
        for panel in panels.iter().filter(|p| p["type"] != "row") {
            let title = panel["title"].as_str().expect("panel title").to_string();
            let targets = panel["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("{title}: no targets"));
            assert!(!targets.is_empty(), "panel {title} has no query");
            for t in targets {
                let expr = t["expr"].as_str().unwrap_or_default();
                assert!(!expr.trim().is_empty(), "panel {title} has an empty query");
                assert_eq!(
                    t["datasource"]["uid"], "prometheus",
                    "panel {title} datasource"
                );
                out.push((title.clone(), expr.to_string()));
            }
        }
    }
    out
}
