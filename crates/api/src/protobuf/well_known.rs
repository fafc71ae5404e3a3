//! The messages whose Go types write their own JSON, decoded into what their `MarshalJSON`
//! writes (k8s.io/apimachinery v1.36):
//!
//! - `Time` (`{seconds, nanos}`): RFC 3339 in UTC to the second, `null` when zero; its protobuf
//!   reader drops the nanoseconds;
//! - `MicroTime`: RFC 3339 in UTC with six fractional digits, `null` when zero;
//! - `Duration` (`{duration}` nanoseconds): Go's `time.Duration.String()`, e.g. `1h2m3.5s`;
//! - `Quantity` (`{string}`): the string, which clients already write in canonical form; `"0"`
//!   when absent, as the zero `Quantity` marshals;
//! - `IntOrString` (`{type, intVal, strVal}`): the number or the string;
//! - `RawExtension` (`{raw}`) and `FieldsV1` (`{Raw}`): the embedded JSON, parsed;
//!   `RawExtension` may also hold a nested Kubernetes protobuf envelope;
//! - `Unknown`: its raw JSON.
//!
//! An empty `Time` message is how upstream writes the zero time, which is why
//! `creationTimestamp` is on the wire of every new object.

use serde_json::Value;

use super::ProtobufError;
use super::envelope;
use super::table::{CustomJson, Table};
use super::wire::{bytes_field, for_each_field, string_field, varint_field};

/// `0001-01-01T00:00:00Z`, Go's zero `time.Time`, in seconds since the Unix epoch.
const GO_ZERO_TIME_SECONDS: i64 = -62_135_596_800;

pub(crate) fn decode(custom: CustomJson, table: &Table, data: &[u8], depth: usize) -> Result<Value, ProtobufError> {
    match custom {
        CustomJson::Time => time(data, false),
        CustomJson::MicroTime => time(data, true),
        CustomJson::Duration => duration(data),
        CustomJson::Quantity => quantity(data),
        CustomJson::IntOrString => int_or_string(data),
        CustomJson::RawExtension => raw_extension(table, data, depth),
        CustomJson::Unknown => unknown(data),
        CustomJson::FieldsV1 => fields_v1(data),
    }
}

fn time(data: &[u8], micro: bool) -> Result<Value, ProtobufError> {
    if data.is_empty() {
        return Ok(Value::Null);
    }
    let (mut seconds, mut nanos) = (0i64, 0i32);
    for_each_field("Timestamp", data, |number, value| {
        match number {
            1 => seconds = varint_field("seconds", value)? as i64,
            2 => nanos = varint_field("nanos", value)? as i32,
            _ => {}
        }
        Ok(())
    })?;
    // Time keeps whole seconds; MicroTime truncates nanoseconds toward zero to microseconds.
    // Go's time.Unix then carries any nanoseconds outside [0, 1e9) into the seconds.
    let nanos = if micro { i64::from(nanos) - i64::from(nanos) % 1000 } else { 0 };
    let total = i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
    let whole = total.div_euclid(1_000_000_000);
    let fraction = total.rem_euclid(1_000_000_000) as u32;
    if whole == i128::from(GO_ZERO_TIME_SECONDS) && fraction == 0 {
        return Ok(Value::Null);
    }
    let out_of_range = || ProtobufError::TimeOutOfRange { seconds, path: String::new() };
    let whole = i64::try_from(whole).map_err(|_| out_of_range())?;
    let formatted = rfc3339(whole, micro.then_some(fraction / 1000)).ok_or_else(out_of_range)?;
    Ok(Value::String(formatted))
}

/// Formats a UTC time as Go's `time.RFC3339`, or with `micros` as `RFC3339Micro`. `None` for
/// years outside 0..=9999, which have no four-digit form.
pub(crate) fn rfc3339(seconds: i64, micros: Option<u32>) -> Option<String> {
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    if !(0..=9999).contains(&year) {
        return None;
    }
    let (hour, minute, second) = (of_day / 3600, of_day % 3600 / 60, of_day % 60);
    let mut out = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}");
    if let Some(micros) = micros {
        out.push_str(&format!(".{micros:06}"));
    }
    out.push('Z');
    Some(out)
}

/// The proleptic Gregorian date of a day counted from 1970-01-01, by the era arithmetic of
/// Howard Hinnant's `civil_from_days`: 400-year eras of 146,097 days, years starting in March.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn duration(data: &[u8]) -> Result<Value, ProtobufError> {
    let mut nanos = 0i64;
    for_each_field("Duration", data, |number, value| {
        if number == 1 {
            nanos = varint_field("duration", value)? as i64;
        }
        Ok(())
    })?;
    Ok(Value::String(go_duration(nanos)))
}

/// Go's `time.Duration.String()`: `0s`, `1.5µs`, `100ms`, `1h0m0s`, `-2m3.5s`.
pub fn go_duration(nanos: i64) -> String {
    let negative = nanos < 0;
    let mut u = nanos.unsigned_abs();
    let mut out = String::new();
    if u < 1_000_000_000 {
        // Under a second: one unit, with as many fractional digits as are not zero.
        let (unit, digits) = match u {
            0 => return "0s".to_owned(),
            1..1_000 => ("ns", 0),
            1_000..1_000_000 => ("µs", 3),
            _ => ("ms", 6),
        };
        let (fraction, whole) = fraction(u, digits);
        out.push_str(&whole.to_string());
        out.push_str(&fraction);
        out.push_str(unit);
    } else {
        let (fraction, seconds) = fraction(u, 9);
        u = seconds;
        let mut tail = format!("{}{fraction}s", u % 60);
        u /= 60;
        if u > 0 {
            tail = format!("{}m{tail}", u % 60);
            u /= 60;
            if u > 0 {
                tail = format!("{u}h{tail}");
            }
        }
        out.push_str(&tail);
    }
    if negative {
        out.insert(0, '-');
    }
    out
}

/// Splits off the lowest `digits` decimal digits of `v` as a fraction without trailing zeros
/// (`".5"`, or empty when they are all zero), returning it and the integer part.
fn fraction(v: u64, digits: u32) -> (String, u64) {
    let scale = 10u64.pow(digits);
    let (whole, low) = (v / scale, v % scale);
    if low == 0 {
        return (String::new(), whole);
    }
    let text = format!("{low:0width$}", width = digits as usize);
    (format!(".{}", text.trim_end_matches('0')), whole)
}

fn quantity(data: &[u8]) -> Result<Value, ProtobufError> {
    let mut text: Option<String> = None;
    for_each_field("Quantity", data, |number, value| {
        if number == 1 {
            text = Some(string_field("string", value)?);
        }
        Ok(())
    })?;
    Ok(Value::String(text.unwrap_or_else(|| "0".to_owned())))
}

fn int_or_string(data: &[u8]) -> Result<Value, ProtobufError> {
    let (mut kind, mut int_val, mut str_val) = (0i64, 0i32, String::new());
    for_each_field("IntOrString", data, |number, value| {
        match number {
            1 => kind = varint_field("type", value)? as i64,
            2 => int_val = varint_field("intVal", value)? as i32,
            3 => str_val = string_field("strVal", value)?,
            _ => {}
        }
        Ok(())
    })?;
    match kind {
        0 => Ok(Value::from(int_val)),
        1 => Ok(Value::String(str_val)),
        value => Err(ProtobufError::ImpossibleIntOrStringType { value, path: String::new() }),
    }
}

/// The single bytes field of `RawExtension` and `FieldsV1`, if present.
fn raw_field<'a>(message: &str, field: &str, data: &'a [u8]) -> Result<Option<&'a [u8]>, ProtobufError> {
    let mut raw = None;
    for_each_field(message, data, |number, value| {
        if number == 1 {
            raw = Some(bytes_field(field, value)?);
        }
        Ok(())
    })?;
    Ok(raw)
}

fn raw_extension(table: &Table, data: &[u8], depth: usize) -> Result<Value, ProtobufError> {
    // Absent raw marshals as null. Upstream fails to marshal a present but empty one; null is
    // the only reading a JSON client could have meant.
    let raw = match raw_field("RawExtension", "raw", data)? {
        None | Some([]) => return Ok(Value::Null),
        Some(raw) => raw,
    };
    if raw.starts_with(&envelope::MAGIC) {
        // A typed object a protobuf client embedded as protobuf: a JSON client would have
        // embedded its JSON.
        return envelope::decode(table, raw, depth + 1);
    }
    parse_json("RawExtension", raw)
}

fn fields_v1(data: &[u8]) -> Result<Value, ProtobufError> {
    match raw_field("FieldsV1", "Raw", data)? {
        None | Some([]) => Ok(Value::Null),
        Some(raw) => parse_json("FieldsV1", raw),
    }
}

fn unknown(data: &[u8]) -> Result<Value, ProtobufError> {
    let (mut raw, mut content_type) = (None, String::new());
    for_each_field("Unknown", data, |number, value| {
        match number {
            2 => raw = Some(bytes_field("raw", value)?),
            4 => content_type = string_field("contentType", value)?,
            _ => {}
        }
        Ok(())
    })?;
    if !content_type.is_empty() && content_type != "application/json" {
        return Err(ProtobufError::EmbeddedContentType { type_name: "Unknown", content_type, path: String::new() });
    }
    match raw {
        None => Ok(Value::Null),
        Some(raw) => parse_json("Unknown", raw),
    }
}

/// Parses embedded bytes that upstream would copy into the JSON as they are. Like upstream's
/// `RawExtension.guessContentType`, only bytes that start as JSON can start (whitespace, an
/// object, array, string, number, `true`, `false` or `null`) are taken for JSON.
fn parse_json(type_name: &'static str, raw: &[u8]) -> Result<Value, ProtobufError> {
    let starts_as_json = matches!(
        raw.first(),
        Some(b'\t' | b'\r' | b'\n' | b' ' | b'{' | b'[' | b'n' | b't' | b'f' | b'"' | b'-' | b'0'..=b'9')
    );
    if !starts_as_json {
        let content_type = if raw.starts_with(&[0xd9, 0xd9, 0xf7]) { "application/cbor" } else { "" };
        return Err(ProtobufError::EmbeddedContentType {
            type_name,
            content_type: content_type.to_owned(),
            path: String::new(),
        });
    }
    serde_json::from_slice(raw).map_err(|source| ProtobufError::EmbeddedJson { type_name, path: String::new(), source })
}

/// Standard base64 with padding, as `encoding/json` writes `[]byte`.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protobuf::table::table;
    use crate::protobuf::tests::encoder::Msg;

    fn decode_as(custom: CustomJson, msg: Msg) -> Result<Value, ProtobufError> {
        decode(custom, table(), &msg.into_bytes(), 0)
    }

    #[test]
    fn time_is_rfc3339_to_the_second_in_utc() {
        let t = Msg::new().int(1, 1_704_164_705).int(2, 999_999_999);
        assert_eq!(decode_as(CustomJson::Time, t).unwrap(), "2024-01-02T03:05:05Z");
    }

    #[test]
    fn empty_time_is_the_zero_time_and_marshals_as_null() {
        assert_eq!(decode_as(CustomJson::Time, Msg::new()).unwrap(), Value::Null);
        let zero = Msg::new().int(1, GO_ZERO_TIME_SECONDS);
        assert_eq!(decode_as(CustomJson::Time, zero).unwrap(), Value::Null);
    }

    #[test]
    fn epoch_and_dates_before_it_format_correctly() {
        assert_eq!(rfc3339(0, None).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(-1, None).unwrap(), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(951_782_400, None).unwrap(), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(253_402_300_799, None).unwrap(), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(-62_167_219_200, None).unwrap(), "0000-01-01T00:00:00Z");
        assert_eq!(rfc3339(253_402_300_800, None), None);
    }

    #[test]
    fn time_beyond_year_9999_is_an_error() {
        let err = decode_as(CustomJson::Time, Msg::new().int(1, i64::MAX)).unwrap_err();
        assert!(matches!(err, ProtobufError::TimeOutOfRange { .. }));
    }

    #[test]
    fn micro_time_keeps_six_fractional_digits_truncated() {
        let t = Msg::new().int(1, 1_704_164_705).int(2, 123_456_789);
        assert_eq!(decode_as(CustomJson::MicroTime, t).unwrap(), "2024-01-02T03:05:05.123456Z");
        let whole = Msg::new().int(1, 1_704_164_705);
        assert_eq!(decode_as(CustomJson::MicroTime, whole).unwrap(), "2024-01-02T03:05:05.000000Z");
    }

    #[test]
    fn micro_time_carries_negative_nanos_into_the_seconds() {
        let t = Msg::new().int(1, 10).int(2, -1_500);
        assert_eq!(decode_as(CustomJson::MicroTime, t).unwrap(), "1970-01-01T00:00:09.999999Z");
    }

    #[test]
    fn durations_print_as_go_does() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(1), "1ns");
        assert_eq!(go_duration(1_500), "1.5µs");
        assert_eq!(go_duration(100_000_000), "100ms");
        assert_eq!(go_duration(1_000_000_000), "1s");
        assert_eq!(go_duration(3_500_000_000), "3.5s");
        assert_eq!(go_duration(90 * 1_000_000_000), "1m30s");
        assert_eq!(go_duration(3_600 * 1_000_000_000), "1h0m0s");
        assert_eq!(go_duration(-(123 * 1_000_000_000 + 500_000_000)), "-2m3.5s");
        assert_eq!(go_duration(i64::MIN), "-2562047h47m16.854775808s");
        assert_eq!(decode_as(CustomJson::Duration, Msg::new().int(1, 5_000_000_000)).unwrap(), "5s");
    }

    #[test]
    fn quantity_is_its_string_and_zero_when_absent() {
        assert_eq!(decode_as(CustomJson::Quantity, Msg::new().string(1, "500m")).unwrap(), "500m");
        assert_eq!(decode_as(CustomJson::Quantity, Msg::new()).unwrap(), "0");
    }

    #[test]
    fn int_or_string_is_a_number_or_a_string() {
        let int = Msg::new().int(1, 0).int(2, 8080).string(3, "");
        assert_eq!(decode_as(CustomJson::IntOrString, int).unwrap(), 8080);
        let string = Msg::new().int(1, 1).int(2, 0).string(3, "25%");
        assert_eq!(decode_as(CustomJson::IntOrString, string).unwrap(), "25%");
        let err = decode_as(CustomJson::IntOrString, Msg::new().int(1, 2)).unwrap_err();
        assert_eq!(err.to_string(), "impossible IntOrString.Type 2");
    }

    #[test]
    fn raw_extension_is_its_json_parsed() {
        let raw = Msg::new().bytes(1, br#"{"b":1,"a":[true,null]}"#);
        let value = decode_as(CustomJson::RawExtension, raw).unwrap();
        assert_eq!(value.to_string(), r#"{"b":1,"a":[true,null]}"#);
        assert_eq!(decode_as(CustomJson::RawExtension, Msg::new()).unwrap(), Value::Null);
    }

    #[test]
    fn raw_extension_that_is_not_json_is_an_error() {
        let cbor = Msg::new().bytes(1, &[0xd9, 0xd9, 0xf7, 0xa0]);
        let err = decode_as(CustomJson::RawExtension, cbor).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot convert RawExtension with unrecognized content type \"application/cbor\" to unstructured"
        );
        let broken = Msg::new().bytes(1, b"{\"a\":");
        let err = decode_as(CustomJson::RawExtension, broken).unwrap_err();
        assert!(err.to_string().starts_with("failed to parse RawExtension bytes as JSON: "), "{err}");
    }

    #[test]
    fn fields_v1_is_the_managed_fields_json() {
        let raw = Msg::new().bytes(1, br#"{"f:data":{".":{},"f:a":{}}}"#);
        let value = decode_as(CustomJson::FieldsV1, raw).unwrap();
        assert_eq!(value["f:data"]["f:a"], serde_json::json!({}));
    }

    #[test]
    fn unknown_is_its_raw_json_unless_another_content_type() {
        let json = Msg::new().bytes(2, b"[1,2]").string(4, "application/json");
        assert_eq!(decode_as(CustomJson::Unknown, json).unwrap(), serde_json::json!([1, 2]));
        let yaml = Msg::new().bytes(2, b"a: 1").string(4, "application/yaml");
        assert!(matches!(decode_as(CustomJson::Unknown, yaml), Err(ProtobufError::EmbeddedContentType { .. })));
    }

    #[test]
    fn base64_pads_as_go_std_encoding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }
}
