//! Hotkey challenges: before a grant, the validator proves it holds its hotkey by signing
//! bytes the executor chose (sr25519, Substrate's signing context; a `<Bytes>` wrapper is
//! accepted as Bittensor wallets add it). The bytes name the SSH key (its fingerprint) and the
//! longest TTL the grant may have, so whoever relays the signature (the miner) can attach
//! neither another key nor a longer grant. A challenge lives `challenge_timeout_seconds` and is
//! used once; after `max_signature_attempts` bad signatures the hotkey is locked out for
//! `challenge_timeout_seconds`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::clock::Clock;
use common::hotkey::Hotkey;

/// Challenges kept at most (the oldest go first).
const MAX_PENDING: usize = 10_000;

/// Why a challenge or its answer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    #[error("validator_hotkey: locked out after too many bad signatures; retry in {0} s")]
    LockedOut(u64),
    #[error("challenge_id: no such challenge (unknown, used, or expired)")]
    Unknown,
    #[error("challenge_id: the challenge expired")]
    Expired,
    #[error("challenge_id: the challenge was issued to another hotkey")]
    OtherHotkey,
    #[error("signature: does not verify with the validator hotkey ({left} attempts left)")]
    BadSignature { left: u32 },
    #[error(
        "ssh_public_key: {given} is not the key the signed challenge names ({signed}); ask for a challenge for this key"
    )]
    OtherKey { signed: String, given: String },
    #[error("ttl_seconds: {ttl} is more than the {max} s the signed challenge allows")]
    TtlAbove { ttl: u64, max: u64 },
}

/// What a grant made with a challenge may be: the key and the longest TTL the validator signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    /// `SHA256:…`, as OpenSSH prints it.
    pub fingerprint: String,
    pub max_ttl_seconds: u64,
}

#[derive(Debug)]
struct Pending {
    hotkey: String,
    terms: Terms,
    message: Vec<u8>,
    expires: Instant,
}

#[derive(Debug, Default)]
struct Failures {
    count: u32,
    locked_until: Option<Instant>,
}

/// The challenges of one service.
#[derive(Debug)]
pub struct Challenges {
    executor_id: String,
    timeout: Duration,
    max_attempts: u32,
    clock: Arc<dyn Clock>,
    pending: Mutex<HashMap<String, Pending>>,
    failures: Mutex<HashMap<String, Failures>>,
}

impl Challenges {
    pub fn new(executor_id: &str, timeout: Duration, max_attempts: u32, clock: Arc<dyn Clock>) -> Self {
        Self {
            executor_id: executor_id.to_owned(),
            timeout,
            max_attempts,
            clock,
            pending: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn locked(&self, hotkey: &str) -> Result<(), ChallengeError> {
        let now = self.clock.now();
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match failures.get(hotkey).and_then(|f| f.locked_until) {
            Some(until) if until > now => Err(ChallengeError::LockedOut(until.duration_since(now).as_secs().max(1))),
            _ => Ok(()),
        }
    }

    /// A new challenge for `hotkey` to accept `terms`: (id, the bytes to sign, seconds it stays
    /// valid).
    pub fn issue(
        &self,
        hotkey: &Hotkey,
        terms: Terms,
        nonce: [u8; 16],
    ) -> Result<(String, Vec<u8>, Duration), ChallengeError> {
        self.locked(hotkey.as_str())?;
        let id = format!("ch-{}", hex::encode(nonce));
        let message = format!(
            "basilica-validator-access v2\nexecutor: {}\nvalidator: {}\nssh-key: {}\nmax-ttl: {}s\nchallenge: {id}\nvalid-for: {}s",
            self.executor_id,
            hotkey.as_str(),
            terms.fingerprint,
            terms.max_ttl_seconds,
            self.timeout.as_secs()
        )
        .into_bytes();
        let now = self.clock.now();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.retain(|_, p| p.expires > now);
        if pending.len() >= MAX_PENDING
            && let Some(oldest) = pending.iter().min_by_key(|(_, p)| p.expires).map(|(k, _)| k.clone())
        {
            pending.remove(&oldest);
        }
        let expires = now + self.timeout;
        let entry = Pending { hotkey: hotkey.as_str().to_owned(), terms, message: message.clone(), expires };
        pending.insert(id.clone(), entry);
        Ok((id, message, self.timeout))
    }

    /// Checks the answer to challenge `id` for a grant of `fingerprint`'s key for `ttl_seconds`;
    /// a good one uses the challenge up. A key or TTL the challenge does not name is refused
    /// before the signature is looked at (and counts as no attempt: it is the relay's mistake,
    /// and the challenge stays usable).
    pub fn verify(
        &self,
        id: &str,
        hotkey: &Hotkey,
        fingerprint: &str,
        ttl_seconds: u64,
        signature: &[u8],
    ) -> Result<(), ChallengeError> {
        self.locked(hotkey.as_str())?;
        let now = self.clock.now();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let p = pending.get(id).ok_or(ChallengeError::Unknown)?;
        if p.expires <= now {
            pending.remove(id);
            return Err(ChallengeError::Expired);
        }
        if p.hotkey != hotkey.as_str() {
            return Err(ChallengeError::OtherHotkey);
        }
        if p.terms.fingerprint != fingerprint {
            return Err(ChallengeError::OtherKey {
                signed: p.terms.fingerprint.clone(),
                given: fingerprint.to_owned(),
            });
        }
        if ttl_seconds > p.terms.max_ttl_seconds {
            return Err(ChallengeError::TtlAbove { ttl: ttl_seconds, max: p.terms.max_ttl_seconds });
        }
        if hotkey.verify(&p.message, signature).is_ok() {
            pending.remove(id);
            self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(hotkey.as_str());
            return Ok(());
        }
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let f = failures.entry(hotkey.as_str().to_owned()).or_default();
        f.count += 1;
        if f.count >= self.max_attempts {
            f.count = 0;
            f.locked_until = Some(now + self.timeout);
            pending.retain(|_, p| p.hotkey != hotkey.as_str());
            return Err(ChallengeError::LockedOut(self.timeout.as_secs().max(1)));
        }
        Err(ChallengeError::BadSignature { left: self.max_attempts - f.count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::clock::ManualClock;

    const ALICE: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
    const BOB: &str = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty";

    const KEY: &str = "SHA256:validator-key";

    fn terms() -> Terms {
        Terms { fingerprint: KEY.into(), max_ttl_seconds: 600 }
    }

    #[test]
    fn bad_signatures_lock_out_and_challenges_expire() {
        let clock = Arc::new(ManualClock::default());
        let challenges = Challenges::new("executor-x", Duration::from_secs(60), 2, clock.clone());
        let alice: Hotkey = ALICE.parse().unwrap();
        let bob: Hotkey = BOB.parse().unwrap();
        let (id, message, _) = challenges.issue(&alice, terms(), [1; 16]).unwrap();
        assert!(String::from_utf8_lossy(&message).contains(&format!("validator: {ALICE}")));
        assert_eq!(challenges.verify(&id, &bob, KEY, 600, &[0; 64]), Err(ChallengeError::OtherHotkey));
        let bad = challenges.verify(&id, &alice, KEY, 600, &[0; 64]);
        assert_eq!(bad, Err(ChallengeError::BadSignature { left: 1 }));
        assert_eq!(challenges.verify(&id, &alice, KEY, 600, &[0; 64]), Err(ChallengeError::LockedOut(60)));
        assert!(matches!(challenges.issue(&alice, terms(), [2; 16]), Err(ChallengeError::LockedOut(_))));
        clock.advance(Duration::from_secs(61));
        let (id, _, _) = challenges.issue(&alice, terms(), [3; 16]).unwrap();
        clock.advance(Duration::from_secs(61));
        assert_eq!(challenges.verify(&id, &alice, KEY, 600, &[0; 64]), Err(ChallengeError::Expired));
        assert_eq!(challenges.verify(&id, &alice, KEY, 600, &[0; 64]), Err(ChallengeError::Unknown));
    }

    /// The signed bytes name the key and the longest TTL; a grant for another key or a longer
    /// TTL is refused whatever the signature, without using the challenge or an attempt up.
    #[test]
    fn the_signed_bytes_bind_the_key_and_the_ttl() {
        let challenges = Challenges::new("executor-x", Duration::from_secs(60), 1, Arc::new(ManualClock::default()));
        let alice: Hotkey = ALICE.parse().unwrap();
        let (id, message, _) = challenges.issue(&alice, terms(), [1; 16]).unwrap();
        assert_eq!(
            String::from_utf8(message).unwrap(),
            format!(
                "basilica-validator-access v2\nexecutor: executor-x\nvalidator: {ALICE}\nssh-key: {KEY}\nmax-ttl: 600s\nchallenge: {id}\nvalid-for: 60s"
            )
        );
        let other = challenges.verify(&id, &alice, "SHA256:relay-key", 600, &[0; 64]);
        let expected = ChallengeError::OtherKey { signed: KEY.into(), given: "SHA256:relay-key".into() };
        assert_eq!(other, Err(expected));
        assert_eq!(
            challenges.verify(&id, &alice, KEY, 601, &[0; 64]),
            Err(ChallengeError::TtlAbove { ttl: 601, max: 600 })
        );
        // Neither was an attempt (one would lock alice out) nor used the challenge up.
        assert_eq!(challenges.verify(&id, &alice, KEY, 60, &[0; 64]), Err(ChallengeError::LockedOut(60)));
    }
}
