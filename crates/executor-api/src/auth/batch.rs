//! Signature checks in batches, on a thread of their own.

use common::hotkey::{SignatureError, Verifier};

/// Most signatures checked in one batch.
const MAX_BATCH: usize = 64;

/// One signature waiting for the batch verifier.
#[derive(Debug)]
struct Job {
    message: Vec<u8>,
    signature: Vec<u8>,
    reply: tokio::sync::oneshot::Sender<Result<(), SignatureError>>,
}

/// A thread that checks the miner's signatures: it takes every call waiting (up to
/// [`MAX_BATCH`]), checks them in one batch, and falls back to one at a time when the batch
/// fails, so a bad signature only costs its own call. With one call waiting it is a single
/// check; under load batches form by themselves, without a timer. The thread ends when the
/// authenticator is dropped.
#[derive(Debug)]
pub(super) struct BatchVerifier {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl BatchVerifier {
    pub(super) fn start(verifier: Verifier) -> Option<Self> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new().name("sr25519-batch".into()).spawn(move || {
            while let Ok(first) = queue.recv() {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH
                    && let Ok(job) = queue.try_recv()
                {
                    batch.push(job);
                }
                let items: Vec<(&[u8], &[u8])> =
                    batch.iter().map(|j| (j.message.as_slice(), j.signature.as_slice())).collect();
                let all_good = batch.len() > 1 && verifier.verify_batch(&items);
                drop(items);
                for job in batch {
                    let result = if all_good { Ok(()) } else { verifier.verify(&job.message, &job.signature) };
                    let _ = job.reply.send(result);
                }
            }
        });
        match spawned {
            Ok(_) => Some(Self { jobs }),
            Err(e) => {
                tracing::warn!(error = %e, "no batch verifier thread; signatures are checked one at a time");
                None
            }
        }
    }

    pub(super) async fn verify(&self, message: Vec<u8>, signature: Vec<u8>) -> Result<(), SignatureError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self.jobs.send(Job { message, signature, reply }).is_err() {
            return Err(SignatureError::Mismatch);
        }
        answer.await.unwrap_or(Err(SignatureError::Mismatch))
    }
}
