//! The relay's wire format between the gate (the forced command) and the service, and where
//! its socket lives. Frames, both ways: a kind byte, a big-endian u32 length, the bytes.
//! Gate → service: `H` (JSON header: grant, command, peer), `I` (stdin), `E` (end of stdin).
//! Service → gate: `O` (stdout), `R` (stderr), `X` (exit status, u32).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const HEADER: u8 = b'H';
pub const STDIN: u8 = b'I';
pub const STDIN_EOF: u8 = b'E';
pub const STDOUT: u8 = b'O';
pub const STDERR: u8 = b'R';
pub const EXIT: u8 = b'X';
/// Largest frame accepted (the header, or a chunk of stdin).
pub const MAX_FRAME: u32 = 1 << 20;

/// The relay socket: beside the `authorized_keys` file (a directory sshd already requires the
/// validator user to reach).
pub fn socket_path(authorized_keys: &Path) -> PathBuf {
    authorized_keys.with_file_name("validator-gate.sock")
}

/// What the gate says first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub grant: String,
    pub command: String,
    /// `SSH_CONNECTION`'s first field.
    pub peer: String,
}

/// One frame's bytes.
pub fn frame(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + data.len());
    f.push(kind);
    f.extend_from_slice(&(data.len() as u32).to_be_bytes());
    f.extend_from_slice(data);
    f
}

pub async fn write_frame<W: AsyncWriteExt + Unpin>(w: &mut W, kind: u8, data: &[u8]) -> std::io::Result<()> {
    w.write_all(&frame(kind, data)).await
}

pub async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("frame of {len} bytes")));
    }
    let mut data = vec![0u8; len as usize];
    r.read_exact(&mut data).await?;
    Ok((head[0], data))
}
