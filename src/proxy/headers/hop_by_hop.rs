//! Hop-by-hop fields (RFC 9110 §7.6.1): which a message carries, and their removal before it
//! is forwarded, except for an `Upgrade` handshake.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Is this an HTTP/1.1 upgrade handshake (`Connection: upgrade` with an `Upgrade` header)?
/// `Upgrade: h2c` is not: it asks to switch this one connection to HTTP/2 (RFC 7540 §3.2,
/// dropped by RFC 9113), which the proxy does not do and must not pass on, so it is stripped
/// like any hop-by-hop header and the request is served over HTTP/1.1.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .any(|v| tokens(v).any(|t| !t.eq_ignore_ascii_case("h2c")))
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case("upgrade")))
}

fn tokens(v: &HeaderValue) -> impl Iterator<Item = &str> {
    v.to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The fixed hop-by-hop names (RFC 9110 §7.6.1, plus `Keep-Alive` and `Proxy-Connection` of
/// older peers). `TE` and `Upgrade` come last: they have their own rules below.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TRANSFER_ENCODING,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::UPGRADE,
];
const CONNECTION_BIT: u16 = 1;
const TE_INDEX: usize = 6;
const UPGRADE_BIT: u16 = 1 << 7;

/// Remove hop-by-hop headers: the fixed set and any header named by `Connection`. With
/// `keep_upgrade`, `Upgrade` and `Connection: upgrade` survive so the handshake reaches the
/// other side. `TE: trailers` survives (unless `Connection` names `TE`): gRPC servers require
/// it to know trailers are read. `Trailer` survives too: it is end-to-end and announces the
/// trailers of a chunked body.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the (few) names notes which of them are present: most messages carry
    // none or only `Connection`, and a `remove` of an absent name still hashes it.
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_index(name.as_str()) {
            present |= 1 << i;
        }
    }
    if present != 0 {
        strip_present(headers, present, keep_upgrade);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// A hop-by-hop name in any case (a field name as received, a `Connection` token): its entry
/// in `HOP_BY_HOP`.
pub(crate) fn hop_by_hop(name: &str) -> Option<&'static HeaderName> {
    // A switch on the length, then at most two compares: this runs for every field of every
    // raw response head, where a walk of the table cost eight compares (and eight look-ups
    // of a standard name's text) per field.
    let candidates: &[(usize, &str)] = match name.len() {
        2 => &[(TE_INDEX, "te")],
        7 => &[(7, "upgrade")],
        10 => &[(0, "connection"), (1, "keep-alive")],
        16 => &[(2, "proxy-connection")],
        17 => &[(3, "transfer-encoding")],
        18 => &[(4, "proxy-authenticate")],
        19 => &[(5, "proxy-authorization")],
        _ => return None,
    };
    candidates
        .iter()
        .find(|(_, text)| name.eq_ignore_ascii_case(text))
        .map(|&(i, _)| &HOP_BY_HOP[i])
}

/// The position of a (lowercase) name in `HOP_BY_HOP`: a match on the string is a length
/// switch and one compare, where comparing `HeaderName`s costs one compare per entry.
fn hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "transfer-encoding" => 3,
        "proxy-authenticate" => 4,
        "proxy-authorization" => 5,
        "te" => TE_INDEX,
        "upgrade" => 7,
        _ => return None,
    })
}

fn strip_present(headers: &mut HeaderMap, present: u16, keep_upgrade: bool) {
    let mut te_named = false;
    let mut named: Vec<HeaderName> = Vec::new();
    if present & CONNECTION_BIT != 0 {
        for t in headers.get_all(header::CONNECTION).iter().flat_map(tokens) {
            match hop_by_hop(t) {
                Some(h) if *h == header::TE => te_named = true,
                // Removed below anyway; `Upgrade` as `keep_upgrade` says.
                Some(_) => {}
                // Only a name that is there costs a `HeaderName` (`close` never is).
                None if headers.contains_key(t) => {
                    named.extend(HeaderName::from_bytes(t.as_bytes()).ok());
                }
                None => {}
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    for (i, name) in HOP_BY_HOP[..TE_INDEX].iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if present & (1 << TE_INDEX) != 0 {
        let trailers = !te_named
            && headers
                .get_all(header::TE)
                .iter()
                .flat_map(tokens)
                .any(|t| t.eq_ignore_ascii_case("trailers"));
        headers.remove(header::TE);
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    if !keep_upgrade && present & UPGRADE_BIT != 0 {
        headers.remove(header::UPGRADE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_fixed_and_named_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::UPGRADE).is_none());
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(h["x-app"], "kept");
    }

    #[test]
    fn each_fixed_name_alone_is_stripped_and_clean_maps_are_untouched() {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "upgrade",
        ] {
            let mut h = HeaderMap::new();
            h.insert("x-app", HeaderValue::from_static("kept"));
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut h, false);
            assert!(h.get(name).is_none(), "{name} survived");
            assert_eq!(h.len(), 1, "{name}: {h:?}");
        }
        let mut clean = HeaderMap::new();
        clean.insert(header::HOST, HeaderValue::from_static("app"));
        clean.append("x-app", HeaderValue::from_static("1"));
        clean.append("x-app", HeaderValue::from_static("2"));
        let before = clean.clone();
        strip_hop_by_hop(&mut clean, false);
        assert_eq!(clean, before);
        strip_hop_by_hop(&mut clean, true);
        assert_eq!(clean[header::CONNECTION], "upgrade");
    }

    #[test]
    fn hop_index_matches_the_table() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_index(name.as_str()), Some(i), "{name}");
        }
        assert_eq!(hop_index("x-app"), None);
    }

    #[test]
    fn hop_by_hop_finds_every_entry_in_any_case() {
        for name in &HOP_BY_HOP {
            let lower = name.as_str();
            let upper = lower.to_ascii_uppercase();
            let mixed: String = lower
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i % 2 == 0 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            for text in [lower, upper.as_str(), mixed.as_str()] {
                assert_eq!(hop_by_hop(text), Some(name), "{text}");
            }
        }
        // Same lengths as entries, other names; other lengths.
        for text in [
            "tx",
            "upgradz",
            "connectiom",
            "keep-alivf",
            "x-app",
            "",
            "content-length",
        ] {
            assert_eq!(hop_by_hop(text), None, "{text}");
        }
    }

    #[test]
    fn connection_naming_te_or_absent_names() {
        // `Connection: te` makes `TE` itself hop-by-hop: even `trailers` goes.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("TE, x-gone"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        // Several `Connection` lines, names in any case, one naming a header that is there.
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("close"));
        h.append(header::CONNECTION, HeaderValue::from_static("X-Hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[header::TE], "trailers");
    }

    #[test]
    fn keeps_upgrade_handshake() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h[header::CONNECTION], "upgrade");
    }

    #[test]
    fn h2c_upgrade_is_not_forwarded() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, HTTP2-Settings"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQAAP__"),
        );
        assert!(!is_upgrade(&h));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
    }
}
