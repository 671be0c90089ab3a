//! TLS for the listeners and for calls to peers (rustls with the ring provider).
//! Identity (PEM → rustls configs, SAN → identity), reload and the dev PKI live here.

pub mod certs;

use std::io;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::proxy::{Direction, PeerTls};

/// Install ring as the process-wide rustls provider. Called once at start-up (and by tests);
/// later calls are no-ops.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The inbound listener's TLS side.
pub struct ServerTls {
    acceptor: TlsAcceptor,
}

impl ServerTls {
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        Self {
            acceptor: TlsAcceptor::from(config),
        }
    }

    pub async fn accept(
        &self,
        tcp: TcpStream,
        _direction: Direction,
    ) -> io::Result<(TlsStream<TcpStream>, PeerTls)> {
        let stream = self.acceptor.accept(tcp).await?;
        Ok((stream, PeerTls::default()))
    }
}
