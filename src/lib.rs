//! tracseq-proxy: a sidecar HTTP proxy for TracSeq services. See ARCHITECTURE.md for the data
//! flow and CONTRACT.md (in the shared docs) for the external interface.

pub mod admin;
pub mod app;
pub mod classify;
pub mod config;
pub mod demo;
pub mod error;
pub mod layers;
pub mod memory;
pub mod proxy;
pub mod telemetry;
pub mod tls;
pub mod trace;
