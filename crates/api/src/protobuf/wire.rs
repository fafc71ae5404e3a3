//! The protobuf wire format, read without a schema: tags, varints, fixed-width numbers and
//! length-delimited payloads.
//!
//! Every read checks the remaining input first, so a truncated or hostile body ends in an error,
//! never in a panic or an allocation sized by the input. Errors carry no field context; the
//! table-driven decoder adds it as they travel up.

use super::ProtobufError;

/// How a field's value is laid out on the wire (the low three bits of its tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WireType {
    Varint,
    Fixed64,
    LengthDelimited,
    StartGroup,
    EndGroup,
    Fixed32,
}

impl WireType {
    fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0 => Some(Self::Varint),
            1 => Some(Self::Fixed64),
            2 => Some(Self::LengthDelimited),
            3 => Some(Self::StartGroup),
            4 => Some(Self::EndGroup),
            5 => Some(Self::Fixed32),
            _ => None,
        }
    }

    /// The number protobuf gives this wire type, as upstream's error messages print it.
    pub(crate) fn number(self) -> u8 {
        match self {
            Self::Varint => 0,
            Self::Fixed64 => 1,
            Self::LengthDelimited => 2,
            Self::StartGroup => 3,
            Self::EndGroup => 4,
            Self::Fixed32 => 5,
        }
    }
}

/// One field as it appears on the wire, before the schema gives it meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WireValue<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl WireValue<'_> {
    pub(crate) fn wire_type(&self) -> WireType {
        match self {
            Self::Varint(_) => WireType::Varint,
            Self::Fixed64(_) => WireType::Fixed64,
            Self::Bytes(_) => WireType::LengthDelimited,
            Self::Fixed32(_) => WireType::Fixed32,
        }
    }
}

/// A cursor over the bytes of one message.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// Reads a base-128 varint. Like upstream's generated code, more than ten bytes is an
    /// overflow and a varint cut off by the end of the input is an unexpected EOF.
    pub(crate) fn varint(&mut self) -> Result<u64, ProtobufError> {
        let mut value: u64 = 0;
        let mut shift = 0u32;
        loop {
            if shift >= 64 {
                return Err(ProtobufError::IntegerOverflow { path: String::new() });
            }
            let byte = *self.data.get(self.pos).ok_or(ProtobufError::UnexpectedEof { path: String::new() })?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], ProtobufError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.data.len())
            .ok_or(ProtobufError::UnexpectedEof { path: String::new() })?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], ProtobufError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Reads a tag: the field number and its wire type. Field number zero and wire types 6 and 7
    /// are errors, worded as upstream's generated `Unmarshal` words them.
    pub(crate) fn tag(&mut self, message: &str) -> Result<(u32, WireType), ProtobufError> {
        let key = self.varint()?;
        let bits = (key & 7) as u8;
        let field = key >> 3;
        let wire_type =
            WireType::from_bits(bits).ok_or(ProtobufError::IllegalWireType { wire_type: bits, path: String::new() })?;
        match u32::try_from(field) {
            Ok(number) if number > 0 => Ok((number, wire_type)),
            _ => Err(ProtobufError::IllegalTag {
                message: message.to_owned(),
                tag: field,
                wire_type: bits,
                path: String::new(),
            }),
        }
    }

    /// Reads the value that follows a tag of the given wire type. Groups (a proto2 feature no
    /// Kubernetes type uses) are skipped whole and reported as `None`.
    pub(crate) fn value(&mut self, message: &str, wire_type: WireType) -> Result<Option<WireValue<'a>>, ProtobufError> {
        Ok(Some(match wire_type {
            WireType::Varint => WireValue::Varint(self.varint()?),
            WireType::Fixed64 => WireValue::Fixed64(u64::from_le_bytes(self.fixed()?)),
            WireType::Fixed32 => WireValue::Fixed32(u32::from_le_bytes(self.fixed()?)),
            WireType::LengthDelimited => {
                let len = self.varint()?;
                // A length beyond the input cannot be satisfied whatever its size.
                let len = usize::try_from(len).map_err(|_| ProtobufError::UnexpectedEof { path: String::new() })?;
                WireValue::Bytes(self.take(len)?)
            }
            WireType::StartGroup => {
                self.skip_group(message)?;
                return Ok(None);
            }
            WireType::EndGroup => {
                return Err(ProtobufError::UnexpectedEndGroup { path: String::new() });
            }
        }))
    }

    /// Skips everything up to the end-group tag that closes the group just opened, counting
    /// nested groups as upstream's `skipGenerated` does.
    fn skip_group(&mut self, message: &str) -> Result<(), ProtobufError> {
        let mut depth = 1usize;
        while depth > 0 {
            let (_, wire_type) = self.tag(message)?;
            match wire_type {
                WireType::StartGroup => depth += 1,
                WireType::EndGroup => depth -= 1,
                other => {
                    self.value(message, other)?;
                }
            }
        }
        Ok(())
    }
}

/// Reads every field of a message in wire order, calling `visit` with each field number and
/// value. This is all a message with a fixed, tiny layout (the envelope, `Time`, `IntOrString`)
/// needs.
pub(crate) fn for_each_field<'a>(
    message: &str,
    data: &'a [u8],
    mut visit: impl FnMut(u32, WireValue<'a>) -> Result<(), ProtobufError>,
) -> Result<(), ProtobufError> {
    let mut reader = Reader::new(data);
    while !reader.is_empty() {
        let (number, wire_type) = reader.tag(message)?;
        if let Some(value) = reader.value(message, wire_type)? {
            visit(number, value)?;
        }
    }
    Ok(())
}

/// Builds the error for a value whose wire type its field's declared type never has. The path
/// is left to the caller, which knows where the field sits.
pub(crate) fn wrong_wire_type(field: &str, value: WireValue<'_>) -> ProtobufError {
    ProtobufError::WrongWireType { field: field.to_owned(), wire_type: value.wire_type().number(), path: String::new() }
}

/// The payload of a length-delimited value (a string, bytes, a message or a map entry).
pub(crate) fn payload<'a>(field: &str, value: WireValue<'a>) -> Result<&'a [u8], ProtobufError> {
    match value {
        WireValue::Bytes(bytes) => Ok(bytes),
        other => Err(wrong_wire_type(field, other)),
    }
}

/// The following three read one field of a small message of fixed layout (the envelope,
/// `Time`, `IntOrString`), naming the field in the error path.
pub(crate) fn bytes_field<'a>(field: &str, value: WireValue<'a>) -> Result<&'a [u8], ProtobufError> {
    payload(field, value).map_err(|e| e.within(field))
}

pub(crate) fn string_field(field: &str, value: WireValue<'_>) -> Result<String, ProtobufError> {
    bytes_field(field, value).map(|b| String::from_utf8_lossy(b).into_owned())
}

pub(crate) fn varint_field(field: &str, value: WireValue<'_>) -> Result<u64, ProtobufError> {
    match value {
        WireValue::Varint(n) => Ok(n),
        other => Err(wrong_wire_type(field, other).within(field)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_reads_multi_byte_values() {
        let mut reader = Reader::new(&[0xac, 0x02, 0x01]);
        assert_eq!(reader.varint().unwrap(), 300);
        assert_eq!(reader.varint().unwrap(), 1);
        assert!(reader.is_empty());
    }

    #[test]
    fn varint_reads_negative_int64_as_ten_bytes() {
        let bytes = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(Reader::new(&bytes).varint().unwrap() as i64, -1);
    }

    #[test]
    fn varint_longer_than_ten_bytes_overflows() {
        let bytes = [0xff; 11];
        let err = Reader::new(&bytes).varint().unwrap_err();
        assert_eq!(err.to_string(), "proto: integer overflow");
    }

    #[test]
    fn varint_cut_off_is_unexpected_eof() {
        let err = Reader::new(&[0x80, 0x80]).varint().unwrap_err();
        assert_eq!(err.to_string(), "unexpected EOF");
    }

    #[test]
    fn length_beyond_input_is_unexpected_eof() {
        // Field 1, length-delimited, claiming 5 bytes of which 2 are present.
        let mut reader = Reader::new(&[0x0a, 0x05, b'a', b'b']);
        let (_, wire_type) = reader.tag("Test").unwrap();
        assert!(matches!(reader.value("Test", wire_type), Err(ProtobufError::UnexpectedEof { .. })));
    }

    #[test]
    fn huge_length_is_unexpected_eof_not_an_allocation() {
        let mut bytes = vec![0x0a];
        bytes.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        let mut reader = Reader::new(&bytes);
        let (_, wire_type) = reader.tag("Test").unwrap();
        assert!(reader.value("Test", wire_type).is_err());
    }

    #[test]
    fn fixed_width_values_are_little_endian() {
        let mut reader = Reader::new(&[
            0x09, 1, 0, 0, 0, 0, 0, 0, 0x80, // field 1, fixed64
            0x15, 2, 0, 0, 0x80, // field 2, fixed32
        ]);
        let (_, t) = reader.tag("Test").unwrap();
        assert_eq!(reader.value("Test", t).unwrap(), Some(WireValue::Fixed64(0x8000_0000_0000_0001)));
        let (_, t) = reader.tag("Test").unwrap();
        assert_eq!(reader.value("Test", t).unwrap(), Some(WireValue::Fixed32(0x8000_0002)));
    }

    #[test]
    fn field_number_zero_is_an_illegal_tag() {
        let err = Reader::new(&[0x02]).tag("ObjectMeta").unwrap_err();
        assert_eq!(err.to_string(), "proto: ObjectMeta: illegal tag 0 (wire type 2)");
    }

    #[test]
    fn wire_type_seven_is_illegal() {
        let err = Reader::new(&[0x0f]).tag("ObjectMeta").unwrap_err();
        assert_eq!(err.to_string(), "proto: illegal wireType 7");
    }

    #[test]
    fn groups_are_skipped_with_their_nested_groups() {
        // field 1 start group, field 2 varint, field 3 start group, field 3 end group,
        // field 1 end group, then field 4 varint 7.
        let bytes = [0x0b, 0x10, 0x01, 0x1b, 0x1c, 0x0c, 0x20, 0x07];
        let mut seen = Vec::new();
        for_each_field("Test", &bytes, |number, value| {
            seen.push((number, value));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![(4, WireValue::Varint(7))]);
    }

    #[test]
    fn end_group_without_start_is_an_error() {
        let err = for_each_field("Test", &[0x0c], |_, _| Ok(())).unwrap_err();
        assert_eq!(err.to_string(), "proto: wiretype end group for non-group");
    }
}
