//! The request head: whether the loop takes it, and where its parts are in the buffer.

use http::{header, HeaderName, Method};

use crate::proxy::headers::list_items;

/// One request head this loop takes, located in the buffer.
pub(super) struct Parsed {
    pub(super) method: Method,
    pub(super) head_len: usize,
    pub(super) path: (usize, usize),
    pub(super) close: bool,
    /// The client accepts trailers (`TE: trailers`); without it hyper sends none either.
    pub(super) trailers: bool,
}

/// A field of the parsed head: its name, and where its value is in the head's bytes.
pub(super) struct Field {
    pub(super) name: HeaderName,
    pub(super) value: (usize, usize),
}

/// Decides whether the loop takes a parsed head, and records where its fields are.
pub(super) fn take(
    req: &httparse::Request<'_, '_>,
    head_len: usize,
    base: usize,
    fields: &mut Vec<Field>,
) -> Result<Parsed, ()> {
    if req.version != Some(1) {
        return Err(());
    }
    let method = Method::from_bytes(req.method.ok_or(())?.as_bytes()).map_err(|_| ())?;
    if method == Method::CONNECT {
        return Err(());
    }
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (start, start + s.len())
    };
    let path = at(req.path.ok_or(())?.as_bytes());
    fields.clear();
    let mut close = false;
    let mut trailers = false;
    for f in req.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| ())?;
        if name == header::CONTENT_LENGTH {
            // A second field, even "0" again, is hyper's to judge.
            if f.value != b"0" || fields.iter().any(|f| f.name == name) {
                return Err(());
            }
        } else if name == header::TRANSFER_ENCODING
            || name == header::EXPECT
            || name == header::UPGRADE
        {
            return Err(());
        } else if name == header::TE {
            trailers |= list_items(f.value).any(|t| t.eq_ignore_ascii_case(b"trailers"));
        } else if name == header::CONNECTION {
            for token in list_items(f.value) {
                if token.eq_ignore_ascii_case(b"upgrade") {
                    return Err(());
                }
                close |= token.eq_ignore_ascii_case(b"close");
            }
        }
        fields.push(Field {
            name,
            value: at(f.value),
        });
    }
    Ok(Parsed {
        method,
        head_len,
        path,
        close,
        trailers,
    })
}
