//! The primitive types of MQTT (section 1.5 of both specifications).

use bytes::{Buf, BufMut, Bytes};

use crate::DecodeError;

/// Reads a Variable Byte Integer (at most 4 bytes, at most 268,435,455). `Ok(None)`: more
/// bytes are needed.
pub(crate) fn read_varint(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0usize;
    for (i, byte) in buf.iter().enumerate().take(4) {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        Err(DecodeError::Malformed("variable byte integer longer than 4 bytes"))
    } else {
        Ok(None)
    }
}

/// Writes a Variable Byte Integer.
pub(crate) fn write_varint(out: &mut Vec<u8>, mut value: usize) {
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            break;
        }
    }
}

/// Returns how many bytes [`write_varint`] writes for `value`.
pub(crate) fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// A cursor over one packet's bytes: every read checks what is left.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Self { buf }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.remaining()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.buf.remaining() < 1 {
            return Err(DecodeError::Malformed("packet ends early"));
        }
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.buf.remaining() < 2 {
            return Err(DecodeError::Malformed("packet ends early"));
        }
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.buf.remaining() < 4 {
            return Err(DecodeError::Malformed("packet ends early"));
        }
        Ok(self.buf.get_u32())
    }

    pub(crate) fn varint(&mut self) -> Result<usize, DecodeError> {
        match read_varint(&self.buf)? {
            Some((value, len)) => {
                self.buf.advance(len);
                Ok(value)
            }
            None => Err(DecodeError::Malformed("packet ends inside a variable byte integer")),
        }
    }

    /// Takes `len` bytes (no copy).
    pub(crate) fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if self.buf.remaining() < len {
            return Err(DecodeError::Malformed("a length runs past the packet"));
        }
        Ok(self.buf.split_to(len))
    }

    /// Binary Data: a two-byte length, then the bytes.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16()?);
        self.take(len)
    }

    /// UTF-8 Encoded String, checked as the specification requires.
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let bytes = self.binary()?;
        let text = std::str::from_utf8(&bytes).map_err(|_| DecodeError::InvalidString)?;
        if text.contains('\u{0}') {
            return Err(DecodeError::InvalidString);
        }
        Ok(text.to_owned())
    }

    /// The rest of the packet (a PUBLISH payload).
    pub(crate) fn rest(&mut self) -> Bytes {
        self.buf.split_to(self.buf.remaining())
    }
}

/// Writes a UTF-8 Encoded String (the caller keeps it under 65,536 bytes).
pub(crate) fn write_string(out: &mut Vec<u8>, text: &str) {
    write_binary(out, text.as_bytes());
}

/// Writes Binary Data (the caller keeps it under 65,536 bytes).
pub(crate) fn write_binary(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = bytes.len().min(usize::from(u16::MAX));
    out.put_u16(len as u16);
    out.extend_from_slice(&bytes[..len]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_byte_integers_round_trip_at_their_edges() {
        for value in [0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455] {
            let mut out = Vec::new();
            write_varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
            assert_eq!(read_varint(&out).unwrap(), Some((value, out.len())), "{value}");
        }
        assert_eq!(read_varint(&[0x80, 0x80]).unwrap(), None, "incomplete");
        assert!(read_varint(&[0x80, 0x80, 0x80, 0x80, 0x01]).is_err(), "five bytes");
    }
}
