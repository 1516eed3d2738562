//! The WebSocket framing of RFC 6455, for a server: decoding masked client frames into
//! messages (fragments joined, UTF-8 checked as it arrives, control frames answered in between)
//! and encoding unmasked server frames.

/// Frame opcodes.
pub mod opcode {
    /// A continuation fragment.
    pub const CONTINUATION: u8 = 0x0;
    /// A text frame.
    pub const TEXT: u8 = 0x1;
    /// A binary frame.
    pub const BINARY: u8 = 0x2;
    /// A close frame.
    pub const CLOSE: u8 = 0x8;
    /// A ping.
    pub const PING: u8 = 0x9;
    /// A pong.
    pub const PONG: u8 = 0xA;
}

/// Why the peer's input ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// A frame or message larger than allowed.
    #[error("message too large")]
    TooLarge,
    /// Text that is not UTF-8.
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    /// Anything else the protocol forbids.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

impl WsError {
    /// The standard close code for this error (RFC 6455 §7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::TooLarge => 1009,
            WsError::InvalidUtf8 => 1007,
            WsError::Protocol(_) => 1002,
        }
    }
}

/// What the peer sent, one complete message or control frame at a time.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A complete text message (valid UTF-8).
    Text(&'a [u8]),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// A ping, to be answered with a pong carrying the same payload.
    Ping(&'a [u8]),
    /// A pong.
    Pong,
    /// A close frame: the code (1005 when absent) and the reason.
    Close(u16, &'a str),
}

/// A frame's header as read from the wire.
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    header_len: usize,
    payload_len: usize,
}

/// Reads one header from the front of `buf`; `Ok(None)` when more bytes are needed.
fn header(buf: &[u8], max: usize) -> Result<Option<Header>, WsError> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(WsError::Protocol("reserved bits set without an extension"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    if !matches!(opcode, 0x0..=0x2 | 0x8..=0xA) {
        return Err(WsError::Protocol("reserved opcode"));
    }
    if b1 & 0x80 == 0 {
        return Err(WsError::Protocol("client frames must be masked"));
    }
    let (len, mut at) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().unwrap_or_default()), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode >= 0x8 && (!fin || len > 125) {
        return Err(WsError::Protocol("control frames must be final and at most 125 bytes"));
    }
    // Control frames (at most 125 bytes) do not count against a message's size.
    if opcode < 0x8 && len > max as u64 {
        return Err(WsError::TooLarge);
    }
    let Some(mask) = buf.get(at..at + 4) else { return Ok(None) };
    let mask = [mask[0], mask[1], mask[2], mask[3]];
    at += 4;
    Ok(Some(Header { fin, opcode, mask, header_len: at, payload_len: len as usize }))
}

/// Unmasks `payload` in place; `offset` is the payload's position within its frame.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i];
    }
}

/// A message being assembled from fragments.
#[derive(Debug, Default)]
struct Fragments {
    opcode: u8,
    data: Vec<u8>,
    /// How much of `data` is known to be valid UTF-8 (text only).
    checked: usize,
}

/// Checks text as it arrives: `Ok` when everything up to `data.len()` is valid or ends in an
/// incomplete character that later bytes may complete (unless `fin`).
fn check_utf8(data: &[u8], checked: &mut usize, fin: bool) -> Result<(), WsError> {
    match std::str::from_utf8(&data[*checked..]) {
        Ok(_) => {
            *checked = data.len();
            Ok(())
        }
        Err(err) if err.error_len().is_none() && !fin => {
            *checked += err.valid_up_to();
            Ok(())
        }
        Err(_) => Err(WsError::InvalidUtf8),
    }
}

/// Decodes a client's frames. Holds only a partly assembled fragmented message between calls;
/// the bytes themselves stay in the caller's read buffer.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// Boxed: it exists only while a fragmented message arrives, and every connection holds a
    /// decoder.
    fragments: Option<Box<Fragments>>,
}

/// Where the next complete item is, once [`Decoder::next`] found one.
#[derive(Debug)]
pub enum Next {
    /// More bytes are needed.
    Incomplete,
    /// An item whose frame took `consumed` bytes of the buffer; read it with
    /// [`Decoder::item`] before consuming.
    Ready {
        /// Bytes of the buffer the frame took.
        consumed: usize,
        /// The item's kind and where its payload is.
        kind: Kind,
    },
    /// A fragment was absorbed; `consumed` bytes can go.
    Absorbed {
        /// Bytes of the buffer the frame took.
        consumed: usize,
    },
}

/// What a ready item is and where its payload lies.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A message or control frame whose payload is `buf[start..end]`.
    InBuffer {
        /// The frame's opcode.
        opcode: u8,
        /// Start of the payload.
        start: usize,
        /// End of the payload.
        end: usize,
    },
    /// A fragmented message, now complete, held by the decoder.
    Assembled,
}

impl Decoder {
    /// Creates a decoder refusing messages larger than `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self { max_message, fragments: None }
    }

    /// Decodes the next frame at the front of `buf` (unmasking it in place).
    pub fn next(&mut self, buf: &mut [u8]) -> Result<Next, WsError> {
        let so_far = self.fragments.as_ref().map_or(0, |f| f.data.len());
        let Some(h) = header(buf, self.max_message - so_far.min(self.max_message))? else {
            return Ok(Next::Incomplete);
        };
        let end = h.header_len + h.payload_len;
        if buf.len() < end {
            return Ok(Next::Incomplete);
        }
        let payload = &mut buf[h.header_len..end];
        unmask(payload, h.mask);
        let kind = Kind::InBuffer { opcode: h.opcode, start: h.header_len, end };
        match h.opcode {
            opcode::TEXT | opcode::BINARY => {
                if self.fragments.is_some() {
                    return Err(WsError::Protocol("a new message began before the last one ended"));
                }
                let mut checked = 0;
                if h.opcode == opcode::TEXT {
                    check_utf8(payload, &mut checked, h.fin)?;
                }
                if h.fin {
                    return Ok(Next::Ready { consumed: end, kind });
                }
                self.fragments =
                    Some(Box::new(Fragments { opcode: h.opcode, data: payload.to_vec(), checked }));
                Ok(Next::Absorbed { consumed: end })
            }
            opcode::CONTINUATION => {
                let Some(fragments) = self.fragments.as_mut() else {
                    return Err(WsError::Protocol("a continuation without a message to continue"));
                };
                fragments.data.extend_from_slice(payload);
                if fragments.opcode == opcode::TEXT {
                    check_utf8(&fragments.data, &mut fragments.checked, h.fin)?;
                }
                if h.fin {
                    Ok(Next::Ready { consumed: end, kind: Kind::Assembled })
                } else {
                    Ok(Next::Absorbed { consumed: end })
                }
            }
            opcode::CLOSE => {
                validate_close(payload)?;
                Ok(Next::Ready { consumed: end, kind })
            }
            _ => Ok(Next::Ready { consumed: end, kind }),
        }
    }

    /// Returns the item [`Decoder::next`] found, reading its payload from `buf`.
    pub fn item<'a>(&'a self, buf: &'a [u8], kind: Kind) -> Incoming<'a> {
        match kind {
            Kind::Assembled => match &self.fragments {
                Some(f) if f.opcode == opcode::TEXT => Incoming::Text(&f.data),
                Some(f) => Incoming::Binary(&f.data),
                None => Incoming::Binary(&[]),
            },
            Kind::InBuffer { opcode, start, end } => {
                let payload = &buf[start..end];
                match opcode {
                    opcode::TEXT => Incoming::Text(payload),
                    opcode::BINARY => Incoming::Binary(payload),
                    opcode::PING => Incoming::Ping(payload),
                    opcode::PONG => Incoming::Pong,
                    _ => match payload {
                        [a, b, reason @ ..] => Incoming::Close(
                            u16::from_be_bytes([*a, *b]),
                            std::str::from_utf8(reason).unwrap_or(""),
                        ),
                        _ => Incoming::Close(1005, ""),
                    },
                }
            }
        }
    }

    /// Drops an assembled message once it has been handled.
    pub fn done(&mut self, kind: Kind) {
        if matches!(kind, Kind::Assembled) {
            self.fragments = None;
        }
    }
}

/// A close payload is empty, or a code a peer may send followed by a UTF-8 reason.
fn validate_close(payload: &[u8]) -> Result<(), WsError> {
    match payload {
        [] => Ok(()),
        [_] => Err(WsError::Protocol("a close payload of one byte")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return Err(WsError::Protocol("a close code a peer may not send"));
            }
            std::str::from_utf8(reason).map(|_| ()).map_err(|_| WsError::InvalidUtf8)
        }
    }
}

/// Appends a server frame's header (final, unmasked) for a payload of `len` bytes.
pub fn encode_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    match len {
        0..=125 => out.push(len as u8),
        126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
}

/// Appends a whole server frame.
pub fn encode(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    encode_header(out, opcode, payload.len());
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code` and `reason` (cut to fit a control frame).
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    encode_header(out, opcode::CLOSE, 2 + cut);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..cut]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![first];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn decode_all(decoder: &mut Decoder, mut buf: Vec<u8>) -> Result<Vec<String>, WsError> {
        let mut out = Vec::new();
        loop {
            match decoder.next(&mut buf)? {
                Next::Incomplete => return Ok(out),
                Next::Absorbed { consumed } => {
                    buf.drain(..consumed);
                }
                Next::Ready { consumed, kind } => {
                    out.push(format!("{:?}", decoder.item(&buf, kind)));
                    decoder.done(kind);
                    buf.drain(..consumed);
                }
            }
        }
    }

    #[test]
    fn frames_decode_whole_fragmented_and_with_control_frames_between() {
        let mut d = Decoder::new(1 << 20);
        let mut wire = masked(0x81, b"hello");
        wire.extend(masked(0x01, "caf".as_bytes()));
        wire.extend(masked(0x89, b"p"));
        wire.extend(masked(0x80, "é!".as_bytes()));
        wire.extend(masked(0x82, &[0u8; 300]));
        let got = decode_all(&mut d, wire).unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], format!("{:?}", Incoming::Text(b"hello")));
        assert_eq!(got[1], format!("{:?}", Incoming::Ping(b"p")));
        assert_eq!(got[2], format!("{:?}", Incoming::Text("café!".as_bytes())));
        assert_eq!(got[3], format!("{:?}", Incoming::Binary(&[0u8; 300])));
    }

    #[test]
    fn a_partial_frame_waits_for_more_bytes() {
        let mut d = Decoder::new(1 << 20);
        let wire = masked(0x81, &[b'a'; 200]);
        for cut in [1, 2, 3, 5, 100, wire.len() - 1] {
            assert!(matches!(d.next(&mut wire[..cut].to_vec()).unwrap(), Next::Incomplete), "cut {cut}");
        }
    }

    #[test]
    fn protocol_violations_are_refused() {
        let cases: Vec<(Vec<u8>, WsError)> = vec![
            (
                vec![0x81, 0x05, b'h', b'e', b'l', b'l', b'o'],
                WsError::Protocol("client frames must be masked"),
            ),
            (masked(0xC1, b"x"), WsError::Protocol("reserved bits set without an extension")),
            (masked(0x83, b"x"), WsError::Protocol("reserved opcode")),
            (masked(0x09, b"x"), WsError::Protocol("control frames must be final and at most 125 bytes")),
            (
                masked(0x89, &[0; 126]),
                WsError::Protocol("control frames must be final and at most 125 bytes"),
            ),
            (masked(0x80, b"x"), WsError::Protocol("a continuation without a message to continue")),
            (masked(0x81, &[0xC3]), WsError::InvalidUtf8),
            (masked(0x81, &[0xFF, b'a']), WsError::InvalidUtf8),
            (masked(0x88, &[3]), WsError::Protocol("a close payload of one byte")),
            (masked(0x88, &1004u16.to_be_bytes()), WsError::Protocol("a close code a peer may not send")),
            (masked(0x82, &[0; 2000]), WsError::TooLarge),
        ];
        for (wire, expected) in cases {
            let mut d = Decoder::new(1000);
            assert_eq!(decode_all(&mut d, wire).unwrap_err(), expected);
        }
    }

    #[test]
    fn invalid_utf8_fails_on_the_fragment_that_carries_it() {
        let mut d = Decoder::new(1 << 20);
        let mut wire = masked(0x01, b"ok");
        wire.extend(masked(0x00, &[0xED, 0xA0, 0x80]));
        assert_eq!(decode_all(&mut d, wire).unwrap_err(), WsError::InvalidUtf8);
    }

    #[test]
    fn a_ping_between_fragments_does_not_count_against_the_message_size() {
        let mut d = Decoder::new(100);
        let mut wire = masked(0x02, &[0; 90]);
        wire.extend(masked(0x89, &[7; 50]));
        wire.extend(masked(0x80, &[0; 10]));
        assert_eq!(decode_all(&mut d, wire).unwrap().len(), 2, "the ping and the 100-byte message");
    }

    #[test]
    fn a_fragmented_message_larger_than_allowed_is_refused() {
        let mut d = Decoder::new(100);
        let mut wire = masked(0x02, &[0; 60]);
        wire.extend(masked(0x80, &[0; 60]));
        assert_eq!(decode_all(&mut d, wire).unwrap_err(), WsError::TooLarge);
    }

    #[test]
    fn server_frames_use_the_shortest_length() {
        for (len, header) in [(5usize, 2usize), (126, 4), (70_000, 10)] {
            let mut out = Vec::new();
            encode(&mut out, opcode::BINARY, &vec![0; len]);
            assert_eq!(out.len(), header + len);
            assert_eq!(out[0], 0x82);
        }
        let mut out = Vec::new();
        encode_close(&mut out, 3001, "slow");
        assert_eq!(out, [0x88, 6, 0x0B, 0xB9, b's', b'l', b'o', b'w']);
    }
}
