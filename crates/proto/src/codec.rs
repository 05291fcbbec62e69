//! The byte primitives every message is written and read with: little-endian integers and
//! floats, length-prefixed byte strings, texts for people.
//!
//! [`Reader`] is a bounds-checked cursor: every read says what was missing instead of
//! panicking, and every length prefix is checked against a cap and against the bytes actually
//! present before anything is allocated.

use crate::error::{ProtoError, Result};

/// Longest text for people (an error message, a reason) kept from a peer, in bytes.
pub const MAX_MESSAGE: usize = 4096;

/// Builds a message's bytes.
#[derive(Debug, Default, Clone)]
pub struct Writer(Vec<u8>);

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Writer(Vec::with_capacity(64))
    }
    /// The bytes written.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Bytes as they are, with no length prefix.
    pub fn raw(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    /// A little-endian u16.
    pub fn u16(&mut self, v: u16) {
        self.raw(&v.to_le_bytes());
    }
    /// A little-endian u32.
    pub fn u32(&mut self, v: u32) {
        self.raw(&v.to_le_bytes());
    }
    /// A little-endian u64.
    pub fn u64(&mut self, v: u64) {
        self.raw(&v.to_le_bytes());
    }
    /// An f64's bits, little-endian.
    pub fn f64(&mut self, v: f64) {
        self.raw(&v.to_le_bytes());
    }
    /// A `u32` length, then the bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.raw(b);
    }
    /// A text for people, cut to [`MAX_MESSAGE`] bytes on a character boundary (so the reader's
    /// cap never refuses what we send).
    pub fn message(&mut self, m: &str) {
        let b = m.as_bytes();
        self.bytes(&b[..floor_char_boundary(m, MAX_MESSAGE.min(b.len()))]);
    }
}

/// Reads a message's bytes: a bounds-checked cursor.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Reader<'a> {
    /// A cursor at the start of `b`.
    pub fn new(b: &'a [u8]) -> Self {
        Reader { b, p: 0 }
    }
    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.b.len() - self.p
    }
    /// The next `n` bytes; `what` names them in the error if they are not all there.
    pub fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.remaining() < n {
            return Err(ProtoError::Malformed(format!("message ends inside {what}")));
        }
        let s = &self.b[self.p..self.p + n];
        self.p += n;
        Ok(s)
    }
    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    /// One byte.
    pub fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    /// A little-endian u16.
    pub fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    /// A little-endian u32.
    pub fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    /// A little-endian u64.
    pub fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    /// An f64 from its little-endian bits (any bits: the caller checks the range).
    pub fn f64(&mut self, what: &str) -> Result<f64> {
        Ok(f64::from_bits(self.u64(what)?))
    }
    /// A `u32` length, checked against `cap` before the bytes are taken, then the bytes.
    pub fn bytes(&mut self, cap: usize, what: &str) -> Result<&'a [u8]> {
        let n = self.u32(what)? as usize;
        if n > cap {
            return Err(ProtoError::TooLarge { what: what.to_string(), size: n, cap });
        }
        self.take(n, what)
    }
    /// A text for people, at most [`MAX_MESSAGE`] bytes; bytes that are not UTF-8 are replaced,
    /// not refused (the text is for reading, never for deciding).
    pub fn message(&mut self, what: &str) -> Result<String> {
        Ok(String::from_utf8_lossy(self.bytes(MAX_MESSAGE, what)?).into_owned())
    }
    /// Whether an `n`-item list of `size`-byte items could fit in what is left: checked before
    /// the list is allocated.
    pub fn fits(&self, n: usize, size: usize) -> bool {
        self.remaining() / size.max(1) >= n
    }
    /// Check that every byte was read: trailing bytes mean the message is not what we think.
    pub fn end(&self) -> Result<()> {
        if self.p != self.b.len() {
            return Err(ProtoError::Malformed(format!("{} unexpected bytes after the message", self.remaining())));
        }
        Ok(())
    }
}

/// The largest character boundary of `s` at or below `i` (`i <= s.len()`).
fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_cut_on_a_character_boundary_and_read_back() {
        // 'é' is two bytes: a cut at MAX_MESSAGE would fall inside the last one.
        let long = format!("a{}", "é".repeat(MAX_MESSAGE));
        let mut w = Writer::new();
        w.message(&long);
        w.message("short");
        let b = w.into_bytes();
        let mut r = Reader::new(&b);
        let first = r.message("first").unwrap();
        assert_eq!(first.len(), MAX_MESSAGE - 1);
        assert!(long.starts_with(&first));
        assert_eq!(r.message("second").unwrap(), "short");
        r.end().unwrap();
    }

    #[test]
    fn reads_past_the_end_and_over_caps_say_what() {
        let mut w = Writer::new();
        w.u32(10);
        w.raw(b"abc");
        let b = w.into_bytes();
        let e = Reader::new(&b).bytes(4, "name").unwrap_err();
        assert!(matches!(&e, ProtoError::TooLarge { size: 10, cap: 4, .. }), "{e}");
        let e = Reader::new(&b).bytes(16, "name").unwrap_err();
        assert!(e.to_string().contains("ends inside name"), "{e}");
        let mut r = Reader::new(&b);
        assert_eq!(r.u16("half").unwrap(), 10);
        assert!(r.end().unwrap_err().to_string().contains("5 unexpected bytes"));
        assert!(r.fits(1, 5) && !r.fits(2, 5) && r.fits(0, 0));
    }
}
