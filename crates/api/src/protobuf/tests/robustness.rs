//! Hostile and damaged bodies: every outcome is a value or an error, never a panic, a hang or a
//! stack overflow. Randomness comes from a fixed-seed generator, so failures reproduce.

use super::encoder::{Msg, envelope};
use super::kubectl;
use crate::protobuf::{ProtobufError, decode_request_body};

/// xorshift64*: small, deterministic, good enough to shake a decoder.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn every_truncation_of_every_captured_body_is_an_error_or_a_value() {
    for body in kubectl::bodies() {
        for len in 0..body.len() {
            let _ = decode_request_body(&body[..len]);
        }
    }
}

#[test]
fn truncating_inside_the_object_reports_unexpected_eof() {
    let body = kubectl::bodies().next().unwrap();
    let err = decode_request_body(&body[..body.len() - 10]).unwrap_err();
    assert!(matches!(err, ProtobufError::UnexpectedEof { .. }), "{err}");
}

#[test]
fn random_byte_damage_to_captured_bodies_never_panics() {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let bodies: Vec<&[u8]> = kubectl::bodies().collect();
    for _ in 0..20_000 {
        let mut body = bodies[rng.below(bodies.len())].to_vec();
        for _ in 0..=rng.below(4) {
            let at = rng.below(body.len());
            body[at] = rng.next() as u8;
        }
        let _ = decode_request_body(&body);
    }
}

#[test]
fn random_objects_of_every_common_kind_never_panic() {
    let kinds = [
        ("v1", "Pod"),
        ("v1", "Service"),
        ("v1", "ConfigMap"),
        ("v1", "Secret"),
        ("v1", "PersistentVolume"),
        ("apps/v1", "Deployment"),
        ("apps/v1", "StatefulSet"),
        ("batch/v1", "CronJob"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("networking.k8s.io/v1", "Ingress"),
        ("events.k8s.io/v1", "Event"),
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"),
    ];
    let mut rng = Rng(42);
    for _ in 0..5_000 {
        let (api_version, kind) = kinds[rng.below(kinds.len())];
        let raw: Vec<u8> = (0..rng.below(200)).map(|_| rng.next() as u8).collect();
        let _ = decode_request_body(&envelope(api_version, kind, Msg::new().raw(&raw)));
    }
}

#[test]
fn random_bytes_after_the_magic_never_panic() {
    let mut rng = Rng(7);
    for _ in 0..5_000 {
        let mut body = b"k8s\0".to_vec();
        body.extend((0..rng.below(64)).map(|_| rng.next() as u8));
        let _ = decode_request_body(&body);
    }
}

#[test]
fn deeply_nested_envelopes_stop_at_the_depth_limit() {
    // A List whose one item is a List whose one item is ... 300 levels down.
    let mut body = envelope("v1", "ConfigMap", Msg::new());
    for _ in 0..300 {
        body = envelope("v1", "List", Msg::new().msg(2, Msg::new().bytes(1, &body)));
    }
    let err = decode_request_body(&body).unwrap_err();
    assert!(matches!(err, ProtobufError::TooDeep { .. }), "{err}");
    assert!(err.to_string().starts_with("object nesting exceeds 100 levels at items[0].items[0].items[0]"));
}

#[test]
fn shallow_nesting_is_decoded() {
    let mut body = envelope("v1", "ConfigMap", Msg::new());
    for _ in 0..10 {
        body = envelope("v1", "List", Msg::new().msg(2, Msg::new().bytes(1, &body)));
    }
    assert!(decode_request_body(&body).is_ok());
}
