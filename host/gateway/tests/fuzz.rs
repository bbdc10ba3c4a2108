//! Property tests over request validation and signature parsing: arbitrary bodies and headers
//! never panic, and what is accepted is exactly what is well-formed and correctly signed.
//! CI runs the default case count; run longer by hand with `PROPTEST_CASES=200000 cargo test
//! -p switchyard-gateway --test fuzz`.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use switchyard_gateway::http::signature::{HMAC_HEADER, Verifier};
use switchyard_model::event::IncomingEvent;
use switchyard_model::signing::{sign_hex, sign_webhook};

const NOW: u64 = 1_800_000_000;

fn verifier() -> Verifier {
    Verifier::new(
        &["k1", "whsec_MDEyMzQ1Njc4OWFiY2RlZg=="],
        Duration::from_secs(300),
    )
    .unwrap()
}

fn header_names() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        HMAC_HEADER,
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "x-other",
    ])
}

proptest! {
    #[test]
    fn parsing_arbitrary_bytes_never_panics(body in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = IncomingEvent::parse(&body);
    }

    #[test]
    fn parsing_json_like_text_never_panics(body in r#"[\\[\\]{}",:0-9a-zA-Z ]{0,512}"#) {
        let _ = IncomingEvent::parse(body.as_bytes());
    }

    #[test]
    fn well_formed_events_parse_back(
        id in "[a-zA-Z0-9_-]{1,128}",
        ty in "[A-Z_]{1,40}",
        n in any::<i64>(),
    ) {
        let body = serde_json::json!({"eventId": id, "type": ty, "payload": {"n": n}}).to_string();
        let e = IncomingEvent::parse(body.as_bytes()).unwrap();
        prop_assert_eq!(e.event_id, id);
        prop_assert_eq!(e.event_type, ty);
        let payload: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
        prop_assert_eq!(payload["n"].as_i64(), Some(n));
    }

    #[test]
    fn arbitrary_headers_never_verify_or_panic(
        headers in prop::collection::vec((header_names(), "[ -~]{0,100}"), 0..6),
        body in prop::collection::vec(any::<u8>(), 0..256),
        now in any::<u64>(),
    ) {
        let mut map = HeaderMap::new();
        for (k, v) in &headers {
            if let Ok(v) = HeaderValue::from_str(v) {
                map.append(HeaderName::from_static(k), v);
            }
        }
        // Random headers essentially never carry a valid MAC.
        prop_assert!(verifier().verify(&map, &body, now).is_err());
    }

    #[test]
    fn correct_signatures_verify_and_one_flipped_bit_does_not(
        body in prop::collection::vec(any::<u8>(), 0..512),
        flip in any::<prop::sample::Index>(),
        webhook in any::<bool>(),
    ) {
        let v = verifier();
        let mut map = HeaderMap::new();
        if webhook {
            map.insert("webhook-id", HeaderValue::from_static("msg_1"));
            map.insert("webhook-timestamp", HeaderValue::from_str(&NOW.to_string()).unwrap());
            map.insert("webhook-signature", HeaderValue::from_str(&sign_webhook(b"k1", "msg_1", NOW, &body)).unwrap());
        } else {
            map.insert(HMAC_HEADER, HeaderValue::from_str(&sign_hex(b"0123456789abcdef", &body)).unwrap());
        }
        prop_assert!(v.verify(&map, &body, NOW).is_ok());
        if !body.is_empty() {
            let mut tampered = body.clone();
            let i = flip.index(tampered.len());
            tampered[i] ^= 1;
            prop_assert!(v.verify(&map, &tampered, NOW).is_err());
        }
    }
}
