//! The W3C Trace Context edge cases (spec level 1, §3.2 and its test suite) and B3 forms.

use super::*;

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE: [u8; 16] = [
    0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36,
];
const SPAN: [u8; 8] = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];

fn tp(s: &str) -> Option<Parent> {
    parse_traceparent(s.as_bytes())
}

#[test]
fn valid_traceparent_is_read() {
    let p = tp(TP).expect("valid");
    assert_eq!(p.trace_id, TRACE);
    assert_eq!(p.span_id, SPAN);
    assert_eq!(p.sampled, Some(true));
    let p = tp("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").expect("valid");
    assert_eq!(p.sampled, Some(false));
    // Other flag bits are ignored; only bit 0 is "sampled".
    let p = tp("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03").expect("valid");
    assert_eq!(p.sampled, Some(true));
}

#[test]
fn bad_length_is_rejected() {
    assert_eq!(tp(&TP[..54]), None);
    assert_eq!(tp(&format!("{TP}0")), None);
    assert_eq!(
        tp(&format!("{TP}-extra")),
        None,
        "version 00 has exactly four fields"
    );
    assert_eq!(tp(""), None);
    assert_eq!(
        tp("00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01"),
        None
    );
}

#[test]
fn version_ff_is_rejected() {
    assert_eq!(
        tp("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        None
    );
}

#[test]
fn future_versions_are_read_as_00() {
    let p = tp("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future")
        .expect("higher versions may append fields");
    assert_eq!(p.trace_id, TRACE);
    assert_eq!(
        tp("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"),
        None,
        "extra data must start with a dash"
    );
}

#[test]
fn all_zero_ids_are_rejected() {
    assert_eq!(
        tp("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        None
    );
    assert_eq!(
        tp("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
        None
    );
}

#[test]
fn upper_case_hex_is_rejected() {
    assert_eq!(
        tp("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
        None
    );
    assert_eq!(
        tp("00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01"),
        None
    );
    assert_eq!(
        tp("0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        None
    );
}

#[test]
fn bad_flags_are_rejected() {
    for flags in ["0x", "1", "-1", "zz", "0G", "0A"] {
        let s = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}");
        assert_eq!(tp(&s), None, "flags {flags:?}");
    }
}

#[test]
fn bad_separators_and_characters_are_rejected() {
    assert_eq!(
        tp("00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        None
    );
    assert_eq!(
        tp("00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01"),
        None
    );
    assert_eq!(
        tp(" 0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        None
    );
}

#[test]
fn format_round_trips() {
    let v = format_traceparent(&TRACE, &SPAN, true);
    assert_eq!(v.to_str().expect("ascii"), TP);
    let v = format_traceparent(&TRACE, &SPAN, false);
    assert_eq!(
        v.to_str().expect("ascii"),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    );
    assert_eq!(hex(&TRACE), "4bf92f3577b34da6a3ce929d0e0e4736");
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_static(v));
    }
    h
}

#[test]
fn extract_prefers_w3c_and_reports_invalid() {
    let h = headers(&[
        ("traceparent", TP),
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
    ]);
    assert!(matches!(extract(&h, true), Extracted::W3c(p) if p.trace_id == TRACE));
    let h = headers(&[("traceparent", "garbage")]);
    assert_eq!(extract(&h, true), Extracted::Invalid);
    assert_eq!(extract(&HeaderMap::new(), true), Extracted::None);
    let h = headers(&[("traceparent", TP), ("traceparent", TP)]);
    assert_eq!(
        extract(&h, false),
        Extracted::Invalid,
        "duplicated traceparent"
    );
}

#[test]
fn b3_single_header() {
    let h = headers(&[(
        "b3",
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
    )]);
    let Extracted::B3(p) = extract(&h, true) else {
        panic!("b3 accepted")
    };
    assert_eq!(hex(&p.trace_id), "80f198ee56343ba864fe8b2a57d3eff7");
    assert_eq!(hex(&p.span_id), "e457b5a2e4d86bd1");
    assert_eq!(p.sampled, Some(true));
    // Not accepted unless configured.
    assert_eq!(extract(&h, false), Extracted::None);
    // Deferred decision, 64-bit trace id.
    let h = headers(&[("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1")]);
    let Extracted::B3(p) = extract(&h, true) else {
        panic!("b3 accepted")
    };
    assert_eq!(hex(&p.trace_id), "000000000000000064fe8b2a57d3eff7");
    assert_eq!(p.sampled, None);
    // Decision only.
    assert_eq!(
        extract(&headers(&[("b3", "0")]), true),
        Extracted::B3Decision(false)
    );
    assert_eq!(
        extract(&headers(&[("b3", "d")]), true),
        Extracted::B3Decision(true)
    );
    // Invalid forms.
    for bad in [
        "80F198EE56343BA864FE8B2A57D3EFF7-e457b5a2e4d86bd1-1",
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-x",
        "80f198ee56343ba864fe8b2a57d3eff7",
        "00000000000000000000000000000000-e457b5a2e4d86bd1-1",
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-x",
    ] {
        let h = HeaderMap::from_iter([(B3, HeaderValue::from_static(bad))]);
        assert_eq!(extract(&h, true), Extracted::None, "{bad}");
    }
}

#[test]
fn b3_multi_header() {
    let h = headers(&[
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-sampled", "0"),
    ]);
    let Extracted::B3(p) = extract(&h, true) else {
        panic!("b3 accepted")
    };
    assert_eq!(p.sampled, Some(false));
    let h = headers(&[
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-flags", "1"),
    ]);
    assert!(matches!(extract(&h, true), Extracted::B3(p) if p.sampled == Some(true)));
    let h = headers(&[("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7")]);
    assert_eq!(extract(&h, true), Extracted::None);
    let mut h = headers(&[
        ("b3", "0"),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
    ]);
    remove_b3(&mut h);
    assert!(h.is_empty());
}
