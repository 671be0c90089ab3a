//! A scriptable upstream (HTTP/1.1 and h2c) on loopback port 0. Behaviour by path:
//! - `/status/{code}`        answer with that status
//! - `/slow/{ms}`            wait, then 200
//! - `/bytes/{n}`            stream n bytes (64 KiB chunks)
//! - `/reset-mid-body`       send headers and part of a declared body, then reset the connection
//! - `/reset-mid-chunked`    the same with a chunked body (no length to betray the cut)
//! - `/stall-mid-body`       headers and part of a declared body, then silence
//! - `/consume`              read the whole request body, then answer with its length
//! - `/trailers`             body with a `grpc-status: 0` trailer
//! - `/ws`                   accept an `Upgrade: websocket` and echo raw bytes
//! - anything else           echo: the request body streamed back, with the method, version
//!   and path in `x-upstream-*` headers
//!
//! Every request head is recorded (`requests()`), so tests can assert what reached the app.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, std::io::Error>;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
}

#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Recorded>>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        Self::serve(listener)
    }

    /// The same upstream on a listener the test set up itself.
    pub fn serve(listener: TcpListener) -> Upstream {
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let seen2 = seen.clone();
        let accepted: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let accepted2 = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                accepted2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let seen = seen2.clone();
                tokio::spawn(async move {
                    // `/reset-mid-body` needs the raw socket: peek the request line first.
                    let mut peek = [0u8; 64];
                    let n = tcp.peek(&mut peek).await.unwrap_or(0);
                    if peek[..n].windows(15).any(|w| w == b"/reset-mid-body") {
                        raw_reset(tcp, false).await;
                        return;
                    }
                    if peek[..n].windows(18).any(|w| w == b"/reset-mid-chunked") {
                        raw_reset(tcp, true).await;
                        return;
                    }
                    if peek[..n].windows(15).any(|w| w == b"/stall-mid-body") {
                        raw_stall(tcp).await;
                        return;
                    }
                    let svc = hyper::service::service_fn(move |req| {
                        let seen = seen.clone();
                        async move { Ok::<_, Infallible>(handle(req, seen).await) }
                    });
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    // Well above the proxy's own limit, so header-count tests see the proxy's.
                    builder.http1().max_headers(200);
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            seen,
            accepted,
            task: Arc::new(task),
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.lock().expect("lock").clone()
    }

    /// TCP connections accepted so far (pooling checks).
    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn count(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }

    pub fn last(&self) -> Recorded {
        self.requests()
            .last()
            .cloned()
            .expect("the upstream saw a request")
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

async fn raw_reset(mut tcp: tokio::net::TcpStream, chunked: bool) {
    let mut buf = [0u8; 4096];
    let _ = tcp.read(&mut buf).await;
    let head: &[u8] = if chunked {
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nc\r\npartial body\r\n"
    } else {
        b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\npartial body"
    };
    let _ = tcp.write_all(head).await;
    let _ = tcp.flush().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    // Abort with RST rather than FIN (zero linger on the std socket, which then closes).
    if let Ok(std) = tcp.into_std() {
        let sock = socket2::Socket::from(std);
        let _ = sock.set_linger(Some(Duration::ZERO));
        drop(sock);
    }
}

/// Headers and part of a declared body, then silence (bounded: 30 s) with the socket open.
async fn raw_stall(mut tcp: tokio::net::TcpStream) {
    let mut buf = [0u8; 4096];
    let _ = tcp.read(&mut buf).await;
    let _ = tcp
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\npartial body")
        .await;
    let _ = tcp.flush().await;
    tokio::time::sleep(Duration::from_secs(30)).await;
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

async fn handle(mut req: Request<Incoming>, seen: Arc<Mutex<Vec<Recorded>>>) -> Response<Body> {
    seen.lock().expect("lock").push(Recorded {
        method: req.method().clone(),
        uri: req.uri().clone(),
        version: req.version(),
        headers: req.headers().clone(),
    });
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let head = parts.next().unwrap_or("");
    let arg = parts.next().unwrap_or("");
    match head {
        "status" => {
            let code = arg
                .parse()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
            let mut r = Response::new(full(format!("status {code}\n")));
            *r.status_mut() = code;
            r
        }
        "slow" => {
            let ms: u64 = arg.parse().unwrap_or(100);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full("slow done\n"))
        }
        "bytes" => {
            let n: usize = arg.parse().unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::unfold(n, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let take = left.min(chunk.len());
                    Some((
                        Ok::<_, std::io::Error>(Frame::data(chunk.slice(..take))),
                        left - take,
                    ))
                }
            });
            let mut r = Response::new(StreamBody::new(stream).boxed());
            r.headers_mut().insert("content-length", n.into());
            r
        }
        "consume" => {
            let n = match req.into_body().collect().await {
                Ok(c) => c.to_bytes().len(),
                Err(_) => return Response::new(full("body failed\n")),
            };
            Response::new(full(format!("consumed {n}\n")))
        }
        "trailers" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().expect("value"));
            let frames = vec![
                Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"with trailers"))),
                Ok(Frame::trailers(trailers)),
            ];
            let mut r = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
            // HTTP/1.1 sends only the trailer fields announced here.
            r.headers_mut()
                .insert("trailer", "grpc-status".parse().expect("value"));
            r
        }
        "ws" => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = upgrade.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = [0u8; 1024];
                    loop {
                        match io.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if io.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                }
            });
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert("upgrade", "websocket".parse().expect("value"));
            r.headers_mut()
                .insert("connection", "upgrade".parse().expect("value"));
            r
        }
        _ => {
            let method = req.method().to_string();
            let version = format!("{:?}", req.version());
            let (_, body) = req.into_parts();
            let mut r = Response::new(body.map_err(std::io::Error::other).boxed());
            let h = r.headers_mut();
            h.insert("x-upstream-method", method.parse().expect("value"));
            h.insert("x-upstream-version", version.parse().expect("value"));
            h.insert(
                "x-upstream-path",
                path.parse().unwrap_or_else(|_| "?".parse().expect("value")),
            );
            r
        }
    }
}
