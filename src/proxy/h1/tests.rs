//! Unit tests of the loop over an in-memory stream.

use super::*;
use crate::proxy::conn_io::ConnState;
use crate::proxy::drain::DrainController;
use crate::proxy::Direction;
use http_body::Frame;
use http_body_util::StreamBody;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn meta() -> Arc<ConnMeta> {
    let addr: std::net::SocketAddr = "127.0.0.1:1".parse().expect("test value");
    Arc::new(ConnMeta {
        direction: Direction::Inbound,
        client_addr: addr,
        client_ip: HeaderValue::from_static("127.0.0.1"),
        local_addr: addr,
        tls: None,
        state: Arc::new(ConnState::default()),
    })
}

/// A chunked answer (no length known) whose body yields one data frame of at least
/// `COPY_LIMIT` bytes: the frame is written on its own (`enc.frame` returns it) and the
/// CRLF that must end the chunk (`after_direct`) is never written.
#[tokio::test]
async fn a_large_chunk_is_followed_by_its_crlf() {
    let (mut client, mut server) = tokio::io::duplex(1 << 20);
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .expect("test value");
    let ctl = DrainController::new();
    let drain = ctl.watcher();
    let stack = tower::service_fn(|_req: Request<Body>| async {
        let frames = vec![
            Ok::<_, io::Error>(Frame::data(Bytes::from(vec![b'x'; 20_000]))),
            Ok(Frame::data(Bytes::from_static(b"tail"))),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        Ok::<_, Infallible>(Response::new(body::boxed(body)))
    });
    let mut buf = BytesMut::new();
    let conn = Conn::new(&mut server, &mut buf, stack, meta(), &drain, 100);
    let ran = tokio::time::timeout(Duration::from_secs(5), conn.run()).await;
    assert!(matches!(ran, Ok(Ok(Next::Close))));
    drop(server);
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.expect("test value");
    let at = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("test value")
        + 4;
    let body = &out[at..];
    let mut want = b"4e20\r\n".to_vec();
    want.extend_from_slice(&[b'x'; 20_000]);
    want.extend_from_slice(b"\r\n4\r\ntail\r\n0\r\n\r\n");
    assert!(
        body == &want[..],
        "chunked body mis-framed; bytes after the 20000-byte chunk: {:?}",
        String::from_utf8_lossy(&body[(6 + 20_000).min(body.len())..])
    );
}
