//! A tiny protobuf writer for building test messages by field number, and builders for the
//! parts every object has, written the way upstream's generated code writes them.

use crate::protobuf::envelope::MAGIC;

/// A message under construction: fields are appended in the order the builder calls come.
#[derive(Debug, Default, Clone)]
pub(crate) struct Msg(Vec<u8>);

fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

impl Msg {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn key(mut self, field: u32, wire_type: u8) -> Self {
        push_varint(&mut self.0, (u64::from(field) << 3) | u64::from(wire_type));
        self
    }

    pub(crate) fn varint(self, field: u32, value: u64) -> Self {
        let mut this = self.key(field, 0);
        push_varint(&mut this.0, value);
        this
    }

    /// An int32 or int64: negative numbers take ten bytes, as in Go.
    pub(crate) fn int(self, field: u32, value: i64) -> Self {
        self.varint(field, value as u64)
    }

    pub(crate) fn bool(self, field: u32, value: bool) -> Self {
        self.varint(field, u64::from(value))
    }

    pub(crate) fn bytes(self, field: u32, value: &[u8]) -> Self {
        let mut this = self.key(field, 2);
        push_varint(&mut this.0, value.len() as u64);
        this.0.extend_from_slice(value);
        this
    }

    pub(crate) fn string(self, field: u32, value: &str) -> Self {
        self.bytes(field, value.as_bytes())
    }

    pub(crate) fn msg(self, field: u32, value: Msg) -> Self {
        self.bytes(field, &value.0)
    }

    /// One `map<string, string>` entry.
    pub(crate) fn entry(self, field: u32, key: &str, value: &str) -> Self {
        self.msg(field, Msg::new().string(1, key).string(2, value))
    }

    /// One map entry whose value is a message.
    pub(crate) fn entry_msg(self, field: u32, key: &str, value: Msg) -> Self {
        self.msg(field, Msg::new().string(1, key).msg(2, value))
    }

    /// Appends bytes as they are, for hand-made wire damage.
    pub(crate) fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// A request body: the magic and a `runtime.Unknown` with the type, the object, and the empty
/// `contentEncoding` and `contentType` upstream always writes.
pub(crate) fn envelope(api_version: &str, kind: &str, object: Msg) -> Vec<u8> {
    let unknown =
        Msg::new().msg(1, Msg::new().string(1, api_version).string(2, kind)).msg(2, object).string(3, "").string(4, "");
    let mut body = MAGIC.to_vec();
    body.extend(unknown.into_bytes());
    body
}

/// `ObjectMeta` as kubectl writes a new object's: every non-pointer field, zero or not, and the
/// zero `creationTimestamp` as an empty message. Labels follow.
pub(crate) fn object_meta(name: &str, labels: &[(&str, &str)]) -> Msg {
    let mut meta = Msg::new()
        .string(1, name)
        .string(2, "")
        .string(3, "")
        .string(4, "")
        .string(5, "")
        .string(6, "")
        .int(7, 0)
        .msg(8, Msg::new());
    for (key, value) in labels {
        meta = meta.entry(11, key, value);
    }
    meta
}

/// An `IntOrString` holding a number, with every field written as upstream writes it.
pub(crate) fn int_or_string_int(value: i32) -> Msg {
    Msg::new().int(1, 0).int(2, i64::from(value)).string(3, "")
}

/// An `IntOrString` holding a string.
pub(crate) fn int_or_string_str(value: &str) -> Msg {
    Msg::new().int(1, 1).int(2, 0).string(3, value)
}

/// A `Quantity`.
pub(crate) fn quantity(value: &str) -> Msg {
    Msg::new().string(1, value)
}
