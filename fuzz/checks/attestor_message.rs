//! The attestor protocol (gpu-attestor `protocol.rs`, protocol 2): any line parses to a message or
//! is an error, the reader turns any byte stream into messages or errors within its size limit,
//! and a parsed message roundtrips through its JSON line unchanged.

use std::sync::OnceLock;
use std::time::Duration;

use gpu_attestor::gpow2::Challenge;
use gpu_attestor::protocol::{self, Message, ProtocolError, Reader};
use gpu_attestor::{prover, sample};

/// The reader's limit here: small, so the fuzzer reaches it.
const LIMIT: usize = 4096;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a current-thread runtime")
    })
}

pub(crate) fn check(data: &[u8]) {
    match protocol::parse(data) {
        Ok(message) => {
            let line = serde_json::to_vec(&message).expect("a message serializes");
            let again = protocol::parse(&line).expect("a serialized message parses");
            assert_eq!(again, message);
            match &message {
                Message::Challenge { challenge, .. } if challenge.validate().is_ok() => {
                    let _ = prover::memory_needed(challenge, 4);
                    let _ = challenge.master();
                }
                Message::Open { gpus, .. } => {
                    let _ = sample::check(&Challenge::plain(1, 32, 4, 64), gpus, false);
                }
                _ => {}
            }
        }
        Err(e) => assert!(matches!(e, ProtocolError::Malformed(_) | ProtocolError::TooLong { .. }), "{e}"),
    }

    // The same bytes as a stream: every message read is well formed, and nothing over the
    // limit is ever returned.
    runtime().block_on(async {
        let mut reader = Reader::with_limit(data, LIMIT);
        for _ in 0..64 {
            match reader.next("message", Duration::from_secs(5)).await {
                Ok(message) => assert!(!message.kind().is_empty()),
                Err(ProtocolError::Closed { .. }) => break,
                Err(ProtocolError::Timeout { .. }) => panic!("a byte slice never blocks"),
                Err(ProtocolError::TooLong { .. }) | Err(ProtocolError::Truncated { .. }) => break,
                Err(_) => {}
            }
        }
    });
}
