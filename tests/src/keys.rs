//! The well-known keys every test uses: the //Alice miner hotkey of the test configs, validator
//! hotkeys made from one seed byte, and SSH keys made by the real `ssh-keygen`.

use std::path::Path;
use std::time::Duration;

use common::hotkey::{Hotkey, HotkeyPair};
use common::process::ProcessSpec;

/// //Alice's SS58 address: the test configs' `managing_miner_hotkey`.
pub const ALICE: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
/// //Alice's secret seed: the key of [`ALICE`] (Substrate's well-known development key).
pub const ALICE_SEED: &str = "0xe5be9a5092b81bca64be81d212e7f2f9eba183bb7a90954f7b76361f6edb5c0a";

/// //Alice's key pair, which signs public API calls in the tests.
pub fn alice() -> HotkeyPair {
    HotkeyPair::parse(ALICE_SEED).expect("//Alice's seed parses")
}

/// An sr25519 key pair from 32 copies of `seed`: a validator or a stranger, distinct per seed.
pub fn sr25519(seed: u8) -> schnorrkel::Keypair {
    schnorrkel::MiniSecretKey::from_bytes(&[seed; 32])
        .expect("32 bytes are a mini secret key")
        .expand_to_keypair(schnorrkel::ExpansionMode::Ed25519)
}

/// The SS58 address of `pair`.
pub fn hotkey_of(pair: &schnorrkel::Keypair) -> String {
    Hotkey::from_public(pair.public.to_bytes()).as_str().to_owned()
}

/// Signs `message` as a Substrate wallet does (context `substrate`).
pub fn sign(pair: &schnorrkel::Keypair, message: &[u8]) -> Vec<u8> {
    pair.sign_simple(b"substrate", message).to_bytes().to_vec()
}

/// An ed25519 SSH key pair at `path` (`path.pub` beside it), made by `ssh-keygen`; returns the
/// public key line.
pub async fn ssh_keygen(path: &Path, comment: &str) -> String {
    let spec = ProcessSpec::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"]).arg(path);
    let out = crate::process::capture(spec, Duration::from_secs(30)).await;
    assert!(out.status.success(), "ssh-keygen: {}", crate::process::text(&out));
    std::fs::read_to_string(path.with_extension("pub")).expect("public key written").trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alice_is_alice() {
        assert_eq!(alice().hotkey().as_str(), ALICE);
        assert_ne!(hotkey_of(&sr25519(1)), hotkey_of(&sr25519(2)));
    }
}
