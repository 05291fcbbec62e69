//! Frames: a little-endian `u32` length, then that many payload bytes.
//!
//! The length is checked against a cap before anything is allocated, and the buffer then grows
//! only as the bytes arrive, so a peer that announces a large frame and sends little makes a
//! reader hold what it sent, not what it announced.

use futures_io::{AsyncRead, AsyncWrite};
use futures_util::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{ProtoError, Result};

/// Largest frame a peer may send, of any service (a prompt's hidden states for a ~100M model
/// fit with room).
pub const MAX_FRAME: usize = 64 << 20;

/// What a frame's buffer starts at; it grows as more bytes arrive.
const FIRST_READ: usize = 64 << 10;

/// Read one frame: the length is checked against `cap` before anything is allocated.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, cap: usize) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let n = u32::from_le_bytes(len) as usize;
    if n > cap {
        return Err(ProtoError::TooLarge { what: "frame".into(), size: n, cap });
    }
    let mut buf = Vec::with_capacity(n.min(FIRST_READ));
    r.take(n as u64).read_to_end(&mut buf).await?;
    if buf.len() < n {
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("frame of {n} bytes ended early"));
        return Err(ProtoError::Io(eof));
    }
    Ok(buf)
}

/// Write one frame and flush it. A payload over [`MAX_FRAME`] is refused: no peer would read it.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> Result<()> {
    if payload.len() > MAX_FRAME {
        return Err(ProtoError::TooLarge { what: "frame".into(), size: payload.len(), cap: MAX_FRAME });
    }
    // One write of length and payload together: a stream multiplexer then sends one packet, not two.
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_executor::block_on;
    use futures_util::io::Cursor;

    #[test]
    fn frames_over_the_cap_are_refused_before_reading() {
        let mut bytes = (1u32 << 30).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 16]);
        let e = block_on(read_frame(&mut Cursor::new(bytes), MAX_FRAME)).unwrap_err();
        assert!(matches!(e, ProtoError::TooLarge { .. }), "{e}");
        let mut out = Vec::new();
        block_on(write_frame(&mut Cursor::new(&mut out), b"hello")).unwrap();
        let back = block_on(read_frame(&mut Cursor::new(out), 16)).unwrap();
        assert_eq!(back, b"hello");
    }

    #[test]
    fn a_frame_larger_than_the_first_read_arrives_whole() {
        let payload: Vec<u8> = (0..3 * FIRST_READ + 7).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        block_on(write_frame(&mut Cursor::new(&mut out), &payload)).unwrap();
        assert_eq!(block_on(read_frame(&mut Cursor::new(out), MAX_FRAME)).unwrap(), payload);
    }

    #[test]
    fn a_frame_cut_short_is_an_io_error() {
        // The length says 5, only 3 bytes follow; and a length itself cut short.
        let mut bytes = 5u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        let e = block_on(read_frame(&mut Cursor::new(bytes), 16)).unwrap_err();
        assert!(matches!(e, ProtoError::Io(_)), "{e}");
        let e = block_on(read_frame(&mut Cursor::new(vec![1u8, 0]), 16)).unwrap_err();
        assert!(matches!(e, ProtoError::Io(_)), "{e}");
    }
}
