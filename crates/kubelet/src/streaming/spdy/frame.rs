//! SPDY/3 frames on the wire, and the zlib-compressed header blocks they carry.
//!
//! Each direction of a connection has one zlib stream, preset with the SPDY dictionary, that
//! every header block (SYN_STREAM, SYN_REPLY, HEADERS) continues with a sync flush: the header
//! blocks have to be compressed and decompressed in frame order.

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::dictionary::DICTIONARY;
use crate::streaming::StreamingError;

const VERSION: u16 = 3;
/// Frames larger than this are refused rather than buffered (the protocol allows 16 MiB).
const MAX_FRAME: usize = 16 << 20;

pub(crate) const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

const FLAG_FIN: u8 = 0x01;
const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// The SETTINGS id of the initial stream window.
pub(crate) const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

/// RST_STREAM status codes used here.
pub(crate) const RST_CANCEL: u32 = 5;

/// Header name/value pairs as sent: names lower-case, repeated values joined by NUL.
pub(crate) type Headers = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    SynStream {
        stream_id: u32,
        fin: bool,
        unidirectional: bool,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    /// (flags, id, value) entries.
    Settings {
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        fin: bool,
        data: Bytes,
    },
    /// A control frame type this implementation has no use for (NOOP, CREDENTIAL).
    Ignored,
}

/// Reads frames from one direction of a connection.
pub(crate) struct FrameReader<R> {
    io: R,
    inflate: Decompress,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R) -> Self {
        FrameReader { io, inflate: Decompress::new(true) }
    }

    /// The next frame; `None` at a clean end of stream between frames.
    pub(crate) async fn read(&mut self) -> Result<Option<Frame>, StreamingError> {
        let mut head = [0u8; 8];
        match self.io.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let flags = head[4];
        let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
        if len > MAX_FRAME {
            return Err(StreamingError::Spdy("frame too large"));
        }
        let mut payload = vec![0u8; len];
        self.io.read_exact(&mut payload).await?;
        let word = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        if head[0] & 0x80 == 0 {
            let fin = flags & FLAG_FIN != 0;
            return Ok(Some(Frame::Data { stream_id: word & 0x7fff_ffff, fin, data: payload.into() }));
        }
        let version = ((word >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(StreamingError::Spdy("unsupported version"));
        }
        let kind = (word & 0xffff) as u16;
        let fin = flags & FLAG_FIN != 0;
        let frame = match kind {
            TYPE_SYN_STREAM => {
                let stream_id = be32(&payload, 0)? & 0x7fff_ffff;
                let block = payload.get(10..).ok_or(StreamingError::Spdy("short SYN_STREAM"))?;
                let headers = self.headers(block)?;
                Frame::SynStream { stream_id, fin, unidirectional: flags & FLAG_UNIDIRECTIONAL != 0, headers }
            }
            TYPE_SYN_REPLY => {
                let stream_id = be32(&payload, 0)? & 0x7fff_ffff;
                let headers = self.headers(&payload[4..])?;
                Frame::SynReply { stream_id, fin, headers }
            }
            TYPE_HEADERS => {
                let stream_id = be32(&payload, 0)? & 0x7fff_ffff;
                let headers = self.headers(&payload[4..])?;
                Frame::Headers { stream_id, headers }
            }
            TYPE_RST_STREAM => {
                Frame::RstStream { stream_id: be32(&payload, 0)? & 0x7fff_ffff, status: be32(&payload, 4)? }
            }
            TYPE_SETTINGS => {
                let count = be32(&payload, 0)? as usize;
                let mut entries = Vec::with_capacity(count.min(64));
                for i in 0..count {
                    let flag_id = be32(&payload, 4 + i * 8)?;
                    entries.push(((flag_id >> 24) as u8, flag_id & 0xff_ffff, be32(&payload, 8 + i * 8)?));
                }
                Frame::Settings { entries }
            }
            TYPE_PING => Frame::Ping { id: be32(&payload, 0)? },
            TYPE_GOAWAY => Frame::GoAway {
                last_good_stream_id: be32(&payload, 0)? & 0x7fff_ffff,
                status: be32(&payload, 4).unwrap_or(0),
            },
            TYPE_WINDOW_UPDATE => Frame::WindowUpdate {
                stream_id: be32(&payload, 0)? & 0x7fff_ffff,
                delta: be32(&payload, 4)? & 0x7fff_ffff,
            },
            _ => Frame::Ignored,
        };
        Ok(Some(frame))
    }

    fn headers(&mut self, block: &[u8]) -> Result<Headers, StreamingError> {
        let raw = inflate(&mut self.inflate, block)?;
        decode_header_block(&raw)
    }
}

fn be32(buf: &[u8], at: usize) -> Result<u32, StreamingError> {
    let b = buf.get(at..at + 4).ok_or(StreamingError::Spdy("short frame"))?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Decompresses one header block, continuing the connection's zlib stream.
fn inflate(z: &mut Decompress, input: &[u8]) -> Result<Vec<u8>, StreamingError> {
    let failed = || StreamingError::HeaderCompression { operation: "decompressed" };
    let mut out = Vec::with_capacity(input.len() * 4 + 256);
    let mut pos = 0;
    loop {
        if out.capacity() - out.len() < 256 {
            out.reserve(out.capacity().max(1024));
        }
        let (in_before, out_before) = (z.total_in(), out.len());
        let mut dictionary_set = false;
        match z.decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync) {
            Ok(_) => {}
            // The peer's stream starts by naming the preset dictionary (zlib's Z_NEED_DICT).
            Err(e) if e.needs_dictionary().is_some() => {
                z.set_dictionary(DICTIONARY).map_err(|_| failed())?;
                dictionary_set = true;
            }
            Err(_) => return Err(failed()),
        }
        pos += (z.total_in() - in_before) as usize;
        let spare = out.len() < out.capacity();
        if pos >= input.len() && spare {
            return Ok(out);
        }
        if z.total_in() == in_before && out.len() == out_before && spare && !dictionary_set {
            // No progress with input left and room to write: a truncated or corrupt block.
            return Err(failed());
        }
    }
}

/// Compresses one header block, continuing the connection's zlib stream with a sync flush.
fn deflate(z: &mut Compress, input: &[u8]) -> Result<Vec<u8>, StreamingError> {
    let mut out = Vec::with_capacity(input.len() + 256);
    let mut pos = 0;
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(1024);
        }
        let before = z.total_in();
        z.compress_vec(&input[pos..], &mut out, FlushCompress::Sync)
            .map_err(|_| StreamingError::HeaderCompression { operation: "compressed" })?;
        pos += (z.total_in() - before) as usize;
        if pos >= input.len() && out.len() < out.capacity() {
            return Ok(out);
        }
    }
}

fn decode_header_block(raw: &[u8]) -> Result<Headers, StreamingError> {
    let count = be32(raw, 0)? as usize;
    let mut at = 4;
    let mut headers = Vec::with_capacity(count.min(64));
    let take = |at: &mut usize| -> Result<String, StreamingError> {
        let len = be32(raw, *at)? as usize;
        let bytes = raw.get(*at + 4..*at + 4 + len).ok_or(StreamingError::Spdy("short header block"))?;
        *at += 4 + len;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    };
    for _ in 0..count {
        let name = take(&mut at)?;
        let value = take(&mut at)?;
        headers.push((name.to_ascii_lowercase(), value));
    }
    Ok(headers)
}

fn encode_header_block(headers: &Headers) -> Vec<u8> {
    let mut raw = Vec::new();
    raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        raw.extend_from_slice(&(name.len() as u32).to_be_bytes());
        raw.extend_from_slice(name.as_bytes());
        raw.extend_from_slice(&(value.len() as u32).to_be_bytes());
        raw.extend_from_slice(value.as_bytes());
    }
    raw
}

/// Encodes frames for one direction of a connection.
pub(crate) struct FrameWriter {
    deflate: Compress,
}

impl FrameWriter {
    pub(crate) fn new() -> Result<Self, StreamingError> {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(DICTIONARY)
            .map_err(|_| StreamingError::HeaderCompression { operation: "compressed" })?;
        Ok(FrameWriter { deflate })
    }

    /// Appends the frame's bytes to `out`.
    pub(crate) fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), StreamingError> {
        let control = |kind: u16, flags: u8, payload: &[u8], out: &mut Vec<u8>| {
            out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
            out.extend_from_slice(&kind.to_be_bytes());
            out.push(flags);
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
            out.extend_from_slice(payload);
        };
        let fin_flag = |fin: bool| if fin { FLAG_FIN } else { 0 };
        match frame {
            Frame::SynStream { stream_id, fin, unidirectional, headers } => {
                let mut payload = Vec::new();
                payload.extend_from_slice(&stream_id.to_be_bytes());
                payload.extend_from_slice(&0u32.to_be_bytes());
                payload.extend_from_slice(&[0, 0]);
                payload.extend(deflate(&mut self.deflate, &encode_header_block(headers))?);
                let flags = fin_flag(*fin) | if *unidirectional { FLAG_UNIDIRECTIONAL } else { 0 };
                control(TYPE_SYN_STREAM, flags, &payload, out);
            }
            Frame::SynReply { stream_id, fin, headers } => {
                let mut payload = stream_id.to_be_bytes().to_vec();
                payload.extend(deflate(&mut self.deflate, &encode_header_block(headers))?);
                control(TYPE_SYN_REPLY, fin_flag(*fin), &payload, out);
            }
            Frame::Headers { stream_id, headers } => {
                let mut payload = stream_id.to_be_bytes().to_vec();
                payload.extend(deflate(&mut self.deflate, &encode_header_block(headers))?);
                control(TYPE_HEADERS, 0, &payload, out);
            }
            Frame::RstStream { stream_id, status } => {
                let payload = [stream_id.to_be_bytes(), status.to_be_bytes()].concat();
                control(TYPE_RST_STREAM, 0, &payload, out);
            }
            Frame::Settings { entries } => {
                let mut payload = (entries.len() as u32).to_be_bytes().to_vec();
                for (flags, id, value) in entries {
                    payload.extend_from_slice(&((u32::from(*flags) << 24) | (id & 0xff_ffff)).to_be_bytes());
                    payload.extend_from_slice(&value.to_be_bytes());
                }
                control(TYPE_SETTINGS, 0, &payload, out);
            }
            Frame::Ping { id } => control(TYPE_PING, 0, &id.to_be_bytes(), out),
            Frame::GoAway { last_good_stream_id, status } => {
                let payload = [last_good_stream_id.to_be_bytes(), status.to_be_bytes()].concat();
                control(TYPE_GOAWAY, 0, &payload, out);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let payload = [stream_id.to_be_bytes(), delta.to_be_bytes()].concat();
                control(TYPE_WINDOW_UPDATE, 0, &payload, out);
            }
            Frame::Data { stream_id, fin, data } => {
                out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                out.push(fin_flag(*fin));
                out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                out.extend_from_slice(data);
            }
            Frame::Ignored => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_with_compressed_headers_across_frames() {
        let mut writer = FrameWriter::new().unwrap();
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                fin: false,
                unidirectional: false,
                headers: vec![("streamtype".into(), "error".into())],
            },
            Frame::SynStream {
                stream_id: 3,
                fin: true,
                unidirectional: false,
                headers: vec![("streamtype".into(), "data".into()), ("port".into(), "8080".into())],
            },
            Frame::SynReply { stream_id: 1, fin: false, headers: vec![] },
            Frame::Data { stream_id: 3, fin: true, data: Bytes::from_static(b"hello") },
            Frame::WindowUpdate { stream_id: 3, delta: 5 },
            Frame::Settings { entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, 1000)] },
            Frame::Ping { id: 1 },
            Frame::RstStream { stream_id: 3, status: RST_CANCEL },
            Frame::GoAway { last_good_stream_id: 3, status: 0 },
        ];
        let mut wire = Vec::new();
        for frame in &frames {
            writer.encode(frame, &mut wire).unwrap();
        }
        let mut reader = FrameReader::new(&wire[..]);
        for frame in &frames {
            assert_eq!(reader.read().await.unwrap().as_ref(), Some(frame));
        }
        assert_eq!(reader.read().await.unwrap(), None);
    }
}
