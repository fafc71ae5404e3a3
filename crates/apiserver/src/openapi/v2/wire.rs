//! The protobuf wire format, as much of it as gnostic's messages need: varints, 64-bit doubles
//! and length-delimited strings and messages.
//!
//! The messages are proto3, so a scalar field holding its default value (empty string, `false`,
//! zero) is left out, except inside a `oneof`, where its presence is the information
//! ([`Writer::bool_always`]). A sub-message is always written once asked for, even empty: an
//! empty `Properties` differs from none for gnostic's readers.

/// Wire type of `int64`, `bool` and enum fields.
pub const VARINT: u8 = 0;
/// Wire type of `double` fields.
pub const FIXED64: u8 = 1;
/// Wire type of strings, bytes and sub-messages.
pub const LEN: u8 = 2;

/// A protobuf message being written.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    /// The encoded message.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn key(&mut self, field: u32, wire_type: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire_type));
    }

    /// A `string` field; left out when empty.
    pub fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }

    /// One element of a `repeated string` field: written even when empty.
    pub fn repeated_string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }

    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, LEN);
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    /// A `bool` field; left out when false.
    pub fn bool(&mut self, field: u32, b: bool) {
        if b {
            self.bool_always(field, b);
        }
    }

    /// A `bool` member of a `oneof`, written whatever its value.
    pub fn bool_always(&mut self, field: u32, b: bool) {
        self.key(field, VARINT);
        self.varint(u64::from(b));
    }

    /// An `int64` field; left out when zero. Negative values take ten bytes, as in protobuf.
    pub fn int64(&mut self, field: u32, v: i64) {
        if v != 0 {
            self.key(field, VARINT);
            self.varint(v as u64);
        }
    }

    /// A `double` field; left out when zero.
    pub fn double(&mut self, field: u32, v: f64) {
        if v != 0.0 {
            self.key(field, FIXED64);
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// A sub-message (or one element of a repeated one), whose fields `fill` writes.
    pub fn message(&mut self, field: u32, fill: impl FnOnce(&mut Writer)) {
        let mut child = Writer::new();
        fill(&mut child);
        self.bytes(field, &child.buf);
    }
}
