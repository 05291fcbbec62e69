//! Frames: a little-endian `u32` length, then that many payload bytes.
//!
//! The length is checked against a cap before the buffer is allocated, so a peer cannot make
//! a reader reserve more than the cap by lying about a frame's size.

use futures_io::{AsyncRead, AsyncWrite};
use futures_util::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{ProtoError, Result};

/// Largest frame a peer may send, of any service (a prompt's hidden states for a ~100M model
/// fit with room).
pub const MAX_FRAME: usize = 64 << 20;

/// Read one frame: the length is checked against `cap` before the buffer is allocated.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, cap: usize) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let n = u32::from_le_bytes(len) as usize;
    if n > cap {
        return Err(ProtoError::TooLarge { what: "frame".into(), size: n, cap });
    }
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf).await?;
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
