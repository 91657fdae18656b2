//! Signature checks in batches, on a small pool of threads, behind a bounded queue.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use common::hotkey::{SignatureError, Verifier};
use tokio::sync::oneshot;

/// Most signatures checked in one batch.
const MAX_BATCH: usize = 64;

/// Most signatures waiting: about 16 full batches, tens of milliseconds of work. A call past
/// it is refused at once rather than queued behind a flood.
pub(super) const QUEUE: usize = 1024;

/// One signature waiting for the batch verifier.
#[derive(Debug)]
pub(super) struct Job {
    message: Vec<u8>,
    signature: Vec<u8>,
    reply: oneshot::Sender<Result<(), SignatureError>>,
}

/// The queue is full: the call is refused without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Busy;

/// Threads that check the miner's signatures: each takes every call waiting (up to
/// [`MAX_BATCH`]), checks them in one batch, and falls back to one at a time when the batch
/// fails, so a bad signature only costs its own call. With one call waiting it is a single
/// check; under load batches form by themselves, without a timer. A call whose caller has gone
/// (its deadline passed, its client went away) is dropped unchecked. The threads end when the
/// authenticator is dropped.
#[derive(Debug)]
pub(super) struct BatchVerifier {
    jobs: SyncSender<Job>,
}

impl BatchVerifier {
    /// `threads` checking threads (at least one) behind a queue of `capacity`; `None` if no
    /// thread could start.
    pub(super) fn start(verifier: Verifier, threads: usize, capacity: usize) -> Option<Self> {
        let (this, queue) = Self::queue(capacity);
        let queue = Arc::new(Mutex::new(queue));
        let mut started = 0;
        for n in 0..threads.max(1) {
            let (verifier, queue) = (verifier.clone(), queue.clone());
            let spawned = std::thread::Builder::new().name(format!("sr25519-{n}")).spawn(move || {
                // The lock is held while waiting for the first job: the thread holding it takes
                // the batch, the others wait their turn.
                while let Some(batch) = next_batch(&queue) {
                    check_batch(&verifier, batch);
                }
            });
            match spawned {
                Ok(_) => started += 1,
                Err(e) => tracing::warn!(error = %e, "a signature checking thread did not start"),
            }
        }
        if started == 0 {
            tracing::warn!("no signature checking thread; signatures are checked one at a time");
            return None;
        }
        Some(this)
    }

    /// The verifier's end of a queue of `capacity`, and the threads' end.
    fn queue(capacity: usize) -> (Self, Receiver<Job>) {
        let (jobs, queue) = std::sync::mpsc::sync_channel(capacity.max(1));
        (Self { jobs }, queue)
    }

    /// Queues one check; its answer comes on the receiver.
    fn submit(
        &self,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<oneshot::Receiver<Result<(), SignatureError>>, Busy> {
        let (reply, answer) = oneshot::channel();
        match self.jobs.try_send(Job { message, signature, reply }) {
            Ok(()) => Ok(answer),
            Err(TrySendError::Full(_)) => Err(Busy),
            // No thread left to check it: refused as a signature that does not verify.
            Err(TrySendError::Disconnected(job)) => {
                let _ = job.reply.send(Err(SignatureError::Mismatch));
                Ok(answer)
            }
        }
    }

    pub(super) async fn verify(
        &self,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<Result<(), SignatureError>, Busy> {
        let answer = self.submit(message, signature)?;
        Ok(answer.await.unwrap_or(Err(SignatureError::Mismatch)))
    }
}

/// The jobs waiting, up to [`MAX_BATCH`]; `None` once the verifier is gone.
fn next_batch(queue: &Mutex<Receiver<Job>>) -> Option<Vec<Job>> {
    let queue = queue.lock().unwrap_or_else(|e| e.into_inner());
    let mut batch = vec![queue.recv().ok()?];
    while batch.len() < MAX_BATCH
        && let Ok(job) = queue.try_recv()
    {
        batch.push(job);
    }
    Some(batch)
}

/// Checks the jobs whose callers still wait and answers them; returns how many were checked.
fn check_batch(verifier: &Verifier, mut batch: Vec<Job>) -> usize {
    batch.retain(|job| !job.reply.is_closed());
    let items: Vec<(&[u8], &[u8])> = batch.iter().map(|j| (j.message.as_slice(), j.signature.as_slice())).collect();
    let all_good = batch.len() > 1 && verifier.verify_batch(&items);
    drop(items);
    let checked = batch.len();
    for job in batch {
        let result = if all_good { Ok(()) } else { verifier.verify(&job.message, &job.signature) };
        let _ = job.reply.send(result);
    }
    checked
}

#[cfg(test)]
mod tests {
    use common::hotkey::HotkeyPair;

    use super::*;

    #[test]
    fn the_queue_is_bounded_and_gone_callers_are_skipped() {
        let alice = HotkeyPair::parse(e2e::ALICE_SEED).unwrap();
        let verifier = alice.hotkey().verifier().unwrap();
        let (batches, queue) = BatchVerifier::queue(3);
        let signed = |text: &[u8]| (text.to_vec(), alice.sign(text).to_vec());
        let mut answers = Vec::new();
        for text in [&b"one"[..], b"two", b"three"] {
            let (message, signature) = signed(text);
            answers.push(batches.submit(message, signature).unwrap());
        }
        // Full: the fourth is refused at once.
        let (message, signature) = signed(b"four");
        assert_eq!(batches.submit(message, signature).unwrap_err(), Busy);
        // The second caller goes away before its turn: its signature is never checked.
        drop(answers.remove(1));
        let batch = next_batch(&Mutex::new(queue)).unwrap();
        assert_eq!(batch.len(), 3);
        assert_eq!(check_batch(&verifier, batch), 2);
        for mut answer in answers {
            assert_eq!(answer.try_recv().unwrap(), Ok(()));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pool_answers_every_call_with_its_own_result() {
        let alice = HotkeyPair::parse(e2e::ALICE_SEED).unwrap();
        let batches = Arc::new(BatchVerifier::start(alice.hotkey().verifier().unwrap(), 2, QUEUE).unwrap());
        let calls: Vec<_> = (0..200u32)
            .map(|i| {
                let batches = batches.clone();
                let message = i.to_le_bytes().to_vec();
                // Every seventh is signed over something else.
                let signed = if i % 7 == 0 { b"else".to_vec() } else { message.clone() };
                let signature = alice.sign(&signed).to_vec();
                tokio::spawn(async move { (i, batches.verify(message, signature).await.unwrap()) })
            })
            .collect();
        for call in calls {
            let (i, result) = call.await.unwrap();
            assert_eq!(result.is_ok(), i % 7 != 0, "{i}: {result:?}");
        }
    }
}
