//! `validator-access gate GRANT SOCKET`, the forced command sshd runs for a validator key (a
//! separate, short-lived process): relays `SSH_ORIGINAL_COMMAND`, stdin, stdout, stderr and
//! the exit status between sshd and the service's relay socket.

use std::io::{Read, Write};
use std::path::Path;

use super::wire::{EXIT, HEADER, Header, MAX_FRAME, STDERR, STDIN, STDIN_EOF, STDOUT, frame};

/// `validator-access gate <grant> <socket>`: the forced command sshd runs for a validator key.
/// Relays to the service and exits with the command's status (255 when the service is not
/// there).
pub fn gate_main(args: &[String]) -> std::process::ExitCode {
    let (Some(grant), Some(socket)) = (args.first(), args.get(1)) else {
        eprintln!("usage: validator-access gate GRANT_ID SOCKET");
        return std::process::ExitCode::from(2);
    };
    match gate(grant, Path::new(socket)) {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("executor: validator access is not available on this host right now ({e})");
            std::process::ExitCode::from(255)
        }
    }
}

fn gate(grant: &str, socket: &Path) -> std::io::Result<u32> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    let header = Header {
        grant: grant.to_owned(),
        command: std::env::var("SSH_ORIGINAL_COMMAND").unwrap_or_default(),
        peer: std::env::var("SSH_CONNECTION").unwrap_or_default().split_whitespace().next().unwrap_or("").to_owned(),
    };
    stream.write_all(&frame(HEADER, &serde_json::to_vec(&header).map_err(std::io::Error::other)?))?;
    let mut writer = stream.try_clone()?;
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = writer.write_all(&frame(STDIN_EOF, &[]));
                    break;
                }
                Ok(n) => {
                    if writer.write_all(&frame(STDIN, &buf[..n])).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let (mut stdout, mut stderr) = (std::io::stdout().lock(), std::io::stderr().lock());
    loop {
        let mut head = [0u8; 5];
        if stream.read_exact(&mut head).is_err() {
            // The service closed the relay: access ended.
            return Ok(255);
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]).min(MAX_FRAME) as usize;
        let mut data = vec![0u8; len];
        stream.read_exact(&mut data)?;
        match head[0] {
            STDOUT => {
                stdout.write_all(&data)?;
                stdout.flush()?;
            }
            STDERR => {
                stderr.write_all(&data)?;
                stderr.flush()?;
            }
            EXIT if data.len() == 4 => return Ok(u32::from_be_bytes([data[0], data[1], data[2], data[3]])),
            _ => return Err(std::io::Error::other("bad frame from the service")),
        }
    }
}
