//! Where a setting's raw text comes from: the command line, the environment (both through
//! clap's matches) or the `--config` TOML file. Keeping the origin lets an error say
//! `--request-timeout (from TRACSEQ_PROXY_REQUEST_TIMEOUT)` or `request-timeout (in FILE)`.

use std::fmt;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::ArgMatches;

use super::cli::RUN_KEYS;
use super::ConfigError;

#[derive(Debug, Clone)]
pub enum Origin {
    Flag,
    Env,
    File(PathBuf),
}

/// A raw value with the name to blame when it does not parse.
#[derive(Debug, Clone)]
pub struct Raw {
    pub key: &'static str,
    pub origin: Origin,
}

impl Raw {
    pub fn err(&self, msg: impl fmt::Display) -> ConfigError {
        ConfigError(format!("{self}: {msg}"))
    }
}

impl fmt::Display for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = self.key.replace('_', "-");
        match &self.origin {
            Origin::Flag => write!(f, "--{flag}"),
            Origin::Env => write!(
                f,
                "--{flag} (from TRACSEQ_PROXY_{})",
                self.key.to_ascii_uppercase()
            ),
            Origin::File(p) => write!(f, "--{flag} (key `{flag}` in {})", p.display()),
        }
    }
}

pub struct Sources<'a> {
    matches: &'a ArgMatches,
    file: Option<(PathBuf, toml::Table)>,
}

impl<'a> Sources<'a> {
    pub fn new(matches: &'a ArgMatches, config: Option<&Path>) -> Result<Self, ConfigError> {
        let file = match config {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!("--config: cannot read {}: {e}", path.display()))
                })?;
                let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
                    let msg = e.message().to_string();
                    ConfigError(format!(
                        "--config: {} is not valid TOML: {msg}",
                        path.display()
                    ))
                })?;
                for key in table.keys() {
                    let id = key.replace('-', "_");
                    if !RUN_KEYS.contains(&id.as_str()) {
                        return Err(ConfigError(format!(
                            "--config: unknown key `{key}` in {}",
                            path.display()
                        )));
                    }
                }
                Some((path.to_path_buf(), table))
            }
        };
        Ok(Self { matches, file })
    }

    fn cli_origin(&self, key: &str) -> Option<Origin> {
        match self.matches.value_source(key)? {
            ValueSource::CommandLine => Some(Origin::Flag),
            ValueSource::EnvVariable => Some(Origin::Env),
            _ => None,
        }
    }

    /// The single value of `key`, by precedence flag > env > file.
    pub fn one(&self, key: &'static str) -> Result<Option<(String, Raw)>, ConfigError> {
        if let Some(origin) = self.cli_origin(key) {
            if let Some(v) = self.matches.get_one::<String>(key) {
                return Ok(Some((v.clone(), Raw { key, origin })));
            }
        }
        let Some((path, table)) = &self.file else {
            return Ok(None);
        };
        let raw = Raw {
            key,
            origin: Origin::File(path.clone()),
        };
        match table.get(&key.replace('_', "-")) {
            None => Ok(None),
            Some(v) => Ok(Some((
                scalar(v).ok_or_else(|| raw.err("expected a string, number or boolean"))?,
                raw,
            ))),
        }
    }

    /// All values of a repeatable `key`: the flag's (or env's) list if given, else the file's.
    pub fn many(&self, key: &'static str) -> Result<(Vec<String>, Raw), ConfigError> {
        if let Some(origin) = self.cli_origin(key) {
            let vals = self
                .matches
                .get_many::<String>(key)
                .map(|v| v.cloned().collect())
                .unwrap_or_default();
            return Ok((vals, Raw { key, origin }));
        }
        let Some((path, table)) = &self.file else {
            return Ok((
                Vec::new(),
                Raw {
                    key,
                    origin: Origin::Flag,
                },
            ));
        };
        let raw = Raw {
            key,
            origin: Origin::File(path.clone()),
        };
        match table.get(&key.replace('_', "-")) {
            None => Ok((Vec::new(), raw)),
            Some(toml::Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    out.push(scalar(item).ok_or_else(|| raw.err("expected an array of strings"))?);
                }
                Ok((out, raw))
            }
            Some(v) => Ok((
                vec![scalar(v).ok_or_else(|| raw.err("expected an array of strings"))?],
                raw,
            )),
        }
    }
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}
