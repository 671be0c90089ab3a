//! Unit tests of the response encoding.

use super::*;
use http::Response;

fn encode(
    resp: Response<()>,
    hint: SizeHint,
    is_head: bool,
    keep: bool,
) -> (String, Framing, bool) {
    let (parts, ()) = resp.into_parts();
    let mut out = Vec::new();
    let allow = Allow {
        is_head,
        keep_alive: keep,
        trailers: true,
    };
    let (f, k) = head(&mut out, &parts, hint, allow).expect("encodes");
    let text = String::from_utf8(out).expect("test value");
    let text = text
        .lines()
        .filter(|l| !l.starts_with("date: "))
        .collect::<Vec<_>>()
        .join("\n");
    (text, f, k)
}

const ALLOW: Allow = Allow {
    is_head: false,
    keep_alive: true,
    trailers: true,
};

fn resp(status: u16, headers: &[(&str, &str)]) -> Response<()> {
    let mut r = Response::builder().status(status);
    for (n, v) in headers {
        r = r.header(*n, *v);
    }
    r.body(()).expect("test value")
}

#[test]
fn lengths_from_field_or_body() {
    let (t, f, k) = encode(
        resp(200, &[("content-length", "2")]),
        SizeHint::with_exact(2),
        false,
        true,
    );
    assert_eq!(t, "HTTP/1.1 200 OK\ncontent-length: 2\n");
    assert_eq!((f, k), (Framing::Length(2), true));
    let (t, f, _) = encode(resp(404, &[]), SizeHint::with_exact(5), false, true);
    assert_eq!(t, "HTTP/1.1 404 Not Found\ncontent-length: 5\n");
    assert_eq!(f, Framing::Length(5));
    let (t, _, _) = encode(
        resp(200, &[("content-length", "2, 2")]),
        SizeHint::with_exact(2),
        false,
        true,
    );
    assert_eq!(
        t, "HTTP/1.1 200 OK\ncontent-length: 2\n",
        "one number on the wire"
    );
    let (t, f, _) = encode(resp(200, &[]), SizeHint::default(), false, true);
    assert_eq!(t, "HTTP/1.1 200 OK\ntransfer-encoding: chunked\n");
    assert_eq!(f, Framing::Chunked(vec![]));
    let (t, f, _) = encode(
        resp(200, &[("content-length", "7")]),
        SizeHint::with_exact(0),
        false,
        true,
    );
    assert_eq!(t, "HTTP/1.1 200 OK\ncontent-length: 0\n");
    assert_eq!(f, Framing::Empty);
}

#[test]
fn no_body_after_head_204_304() {
    let (t, f, _) = encode(
        resp(200, &[("content-length", "9")]),
        SizeHint::with_exact(0),
        true,
        true,
    );
    assert_eq!(t, "HTTP/1.1 200 OK\ncontent-length: 9\n");
    assert_eq!(f, Framing::Empty);
    let (t, f, _) = encode(resp(200, &[]), SizeHint::default(), true, true);
    assert_eq!(t, "HTTP/1.1 200 OK\n");
    assert_eq!(f, Framing::Empty);
    for s in [204, 304] {
        let (t, f, _) = encode(
            resp(
                s,
                &[("content-length", "3"), ("transfer-encoding", "chunked")],
            ),
            SizeHint::default(),
            false,
            true,
        );
        assert!(
            !t.contains("content-length") && !t.contains("transfer-encoding"),
            "{t}"
        );
        assert_eq!(f, Framing::Empty);
    }
}

#[test]
fn close_and_conflicts() {
    let (t, _, k) = encode(resp(200, &[]), SizeHint::with_exact(0), false, false);
    assert!(t.contains("\nconnection: close\n"), "{t}");
    assert!(!k);
    let (t, _, k) = encode(
        resp(200, &[("connection", "Close")]),
        SizeHint::with_exact(0),
        false,
        true,
    );
    assert_eq!(t.matches("onnection").count(), 1, "{t}");
    assert!(!k);
    let (parts, ()) = resp(
        200,
        &[("content-length", "2"), ("transfer-encoding", "chunked")],
    )
    .into_parts();
    assert!(head(&mut Vec::new(), &parts, SizeHint::default(), ALLOW).is_err());
    let (parts, ()) = resp(200, &[("content-length", "x")]).into_parts();
    assert!(head(&mut Vec::new(), &parts, SizeHint::default(), ALLOW).is_err());
    let (parts, ()) = resp(103, &[]).into_parts();
    assert!(head(&mut Vec::new(), &parts, SizeHint::default(), ALLOW).is_err());
    let (t, f, _) = encode(
        resp(200, &[("transfer-encoding", "gzip")]),
        SizeHint::default(),
        false,
        true,
    );
    assert!(t.contains("transfer-encoding: gzip, chunked"), "{t}");
    assert!(matches!(f, Framing::Chunked(_)));
}

#[test]
fn trailers_only_for_clients_that_asked() {
    let (parts, ()) = resp(200, &[("trailer", "grpc-status")]).into_parts();
    let mut out = Vec::new();
    let no = Allow {
        trailers: false,
        ..ALLOW
    };
    let (f, _) = head(&mut out, &parts, SizeHint::default(), no).expect("test value");
    assert_eq!(f, Framing::Chunked(vec![]));
    assert!(String::from_utf8(out)
        .expect("test value")
        .contains("trailer: grpc-status\r\n"));
    let (f, _) = head(&mut Vec::new(), &parts, SizeHint::default(), ALLOW).expect("test value");
    assert_eq!(
        f,
        Framing::Chunked(vec![HeaderName::from_static("grpc-status")])
    );
}

#[test]
fn chunks_and_trailers() {
    let mut enc = BodyEncoder::new(Framing::Chunked(vec![HeaderName::from_static(
        "grpc-status",
    )]));
    let mut out = Vec::new();
    assert!(enc
        .frame(&mut out, Frame::data(Bytes::from_static(b"hello")))
        .expect("test value")
        .is_none());
    assert!(enc
        .frame(&mut out, Frame::data(Bytes::new()))
        .expect("test value")
        .is_none());
    let mut t = HeaderMap::new();
    t.insert("grpc-status", "0".parse().expect("test value"));
    t.insert("x-secret", "1".parse().expect("test value"));
    enc.frame(&mut out, Frame::trailers(t)).expect("test value");
    enc.finish(&mut out).expect("test value");
    assert_eq!(out, b"5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n");
}

#[test]
fn length_is_enforced() {
    let mut enc = BodyEncoder::new(Framing::Length(3));
    let mut out = Vec::new();
    assert!(enc
        .frame(&mut out, Frame::data(Bytes::from_static(b"ab")))
        .expect("test value")
        .is_none());
    assert!(enc.finish(&mut out).is_err());
    assert!(enc
        .frame(&mut out, Frame::data(Bytes::from_static(b"cd")))
        .is_err());
    let big = Bytes::from(vec![b'x'; COPY_LIMIT]);
    let mut enc = BodyEncoder::new(Framing::Length(COPY_LIMIT as u64));
    assert_eq!(
        enc.frame(&mut out, Frame::data(big.clone()))
            .expect("test value"),
        Some(big)
    );
    enc.finish(&mut out).expect("test value");
}

/// Raw upstream fields, as the pool's parser leaves them: `server: up`, `x-request-id:
/// theirs`, `date: d`.
fn with_raw(status: u16, length: Option<u64>, map: &[(&str, &str)]) -> Response<()> {
    let mut r = resp(status, map);
    let head = Bytes::from_static(b"server: up\r\nx-request-id: theirs\r\ndate: d\r\n");
    let spans = vec![[0, 6, 8, 10], [12, 24, 26, 32], [34, 38, 40, 41]];
    r.extensions_mut()
        .insert(RawFields::new(head, spans, length, true));
    r
}

#[test]
fn raw_fields_are_written_and_the_map_replaces_them() {
    let (parts, ()) = with_raw(200, Some(2), &[("x-request-id", "ours")]).into_parts();
    let mut out = Vec::new();
    let (f, k) = head(&mut out, &parts, SizeHint::with_exact(2), ALLOW).expect("encodes");
    assert_eq!(
        String::from_utf8(out).expect("ascii"),
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nserver: up\r\ndate: d\r\nx-request-id: ours\r\n\r\n",
        "the upstream's date is kept (no second one), its x-request-id replaced"
    );
    assert_eq!((f, k), (Framing::Length(2), true));
    // HEAD keeps the upstream's length; 204 and 304 carry none; a body known empty says 0.
    let (t, f, _) = encode(
        with_raw(200, Some(7), &[]),
        SizeHint::with_exact(0),
        true,
        true,
    );
    assert_eq!(
        t,
        "HTTP/1.1 200 OK\ncontent-length: 7\nserver: up\nx-request-id: theirs\n"
    );
    assert_eq!(f, Framing::Empty);
    let (t, _, _) = encode(
        with_raw(204, Some(7), &[]),
        SizeHint::with_exact(0),
        false,
        true,
    );
    assert_eq!(
        t,
        "HTTP/1.1 204 No Content\nserver: up\nx-request-id: theirs\n"
    );
    // Chunked upstream: no length among the raw fields, the body decides.
    let (t, f, k) = encode(with_raw(200, None, &[]), SizeHint::new(), false, false);
    assert_eq!(
        t,
        "HTTP/1.1 200 OK\nserver: up\nx-request-id: theirs\ntransfer-encoding: chunked\nconnection: close\n"
    );
    assert_eq!((f, k), (Framing::Chunked(Vec::new()), false));
    // An empty body says `content-length: 0` once, whatever the upstream's field said.
    let (t, f, _) = encode(
        with_raw(200, Some(0), &[]),
        SizeHint::with_exact(0),
        false,
        true,
    );
    assert_eq!(
        t,
        "HTTP/1.1 200 OK\nserver: up\nx-request-id: theirs\ncontent-length: 0\n"
    );
    assert_eq!(f, Framing::Empty);
    // A larger map is searched by hashing: its names still hide the upstream's.
    let map = [
        ("a", "1"),
        ("b", "2"),
        ("c", "3"),
        ("d", "4"),
        ("server", "ours"),
    ];
    let (t, _, _) = encode(
        with_raw(200, Some(2), &map),
        SizeHint::with_exact(2),
        false,
        true,
    );
    assert_eq!(
        t,
        "HTTP/1.1 200 OK\ncontent-length: 2\nx-request-id: theirs\na: 1\nb: 2\nc: 3\nd: 4\nserver: ours\n"
    );
}
