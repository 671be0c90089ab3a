//! `tracseq-proxy certs init|issue|inspect`: the development PKI (rcgen).

use crate::config::cli::CertsArgs;

pub fn run(_args: CertsArgs) -> anyhow::Result<()> {
    anyhow::bail!("not available in this build yet")
}
