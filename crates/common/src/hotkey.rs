//! Bittensor hotkeys: SS58 addresses and sr25519 signature verification.
//!
//! A hotkey is an sr25519 public key written as an SS58 address with network prefix 42 (the
//! generic Substrate prefix Bittensor uses). Signatures are schnorrkel's with the `substrate`
//! signing context, as `bittensor-wallet` and polkadot.js produce them; browser wallets sign the
//! message wrapped in `<Bytes>…</Bytes>`, which is accepted too.

use std::fmt;
use std::str::FromStr;

use blake2::{Blake2b512, Digest};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// SS58 network prefix of Bittensor (and generic Substrate) addresses.
pub const SS58_PREFIX: u8 = 42;

const SIGNING_CONTEXT: &[u8] = b"substrate";

/// Why a string is not a hotkey address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("`{0}` is not base58")]
    NotBase58(String),
    #[error("`{address}` decodes to {len} bytes, an SS58 address of a 32-byte key has 35")]
    Length { address: String, len: usize },
    #[error("`{address}` has network prefix {prefix}, expected {SS58_PREFIX} (Bittensor)")]
    Prefix { address: String, prefix: u8 },
    #[error("`{0}` fails its SS58 checksum (mistyped?)")]
    Checksum(String),
    #[error("`{0}` is not an sr25519 public key")]
    NotAKey(String),
}

/// Why a signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature must be 64 bytes, got {0}")]
    Length(usize),
    #[error("signature is not an sr25519 signature")]
    Malformed,
    #[error("signature does not match the message and hotkey")]
    Mismatch,
}

/// A validated hotkey: its public key and canonical address.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Hotkey {
    public: [u8; 32],
    address: String,
}

impl Hotkey {
    /// The hotkey of a raw 32-byte sr25519 public key.
    pub fn from_public(public: [u8; 32]) -> Self {
        let mut data = Vec::with_capacity(35);
        data.push(SS58_PREFIX);
        data.extend_from_slice(&public);
        let checksum = ss58_checksum(&data);
        data.extend_from_slice(&checksum);
        Self { public, address: bs58::encode(data).into_string() }
    }

    pub fn public_key(&self) -> &[u8; 32] {
        &self.public
    }

    /// The SS58 address.
    pub fn as_str(&self) -> &str {
        &self.address
    }

    /// Checks an sr25519 signature by this hotkey over `message`, raw or `<Bytes>`-wrapped.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        self.verifier()?.verify(message, signature)
    }

    /// The key ready for verifying many signatures (decompressed once).
    pub fn verifier(&self) -> Result<Verifier, SignatureError> {
        // The address was checked to be a valid point when parsed.
        let key = schnorrkel::PublicKey::from_bytes(&self.public).map_err(|_| SignatureError::Mismatch)?;
        Ok(Verifier { key })
    }
}

/// A hotkey's public key, decompressed, for verifying signatures.
#[derive(Debug, Clone)]
pub struct Verifier {
    key: schnorrkel::PublicKey,
}

impl Verifier {
    /// Checks an sr25519 signature over `message`, raw or `<Bytes>`-wrapped.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        let bytes: [u8; 64] = signature.try_into().map_err(|_| SignatureError::Length(signature.len()))?;
        let signature = schnorrkel::Signature::from_bytes(&bytes).map_err(|_| SignatureError::Malformed)?;
        if self.key.verify_simple(SIGNING_CONTEXT, message, &signature).is_ok() {
            return Ok(());
        }
        let mut wrapped = Vec::with_capacity(message.len() + 15);
        wrapped.extend_from_slice(b"<Bytes>");
        wrapped.extend_from_slice(message);
        wrapped.extend_from_slice(b"</Bytes>");
        self.key.verify_simple(SIGNING_CONTEXT, &wrapped, &signature).map_err(|_| SignatureError::Mismatch)
    }

    /// Whether every `(message, signature)` is a raw (not `<Bytes>`-wrapped) signature by this
    /// key, checked as one batch: about a third of the cost per signature from 16 on. `false`
    /// says only that at least one is not; check them one by one to learn which.
    pub fn verify_batch(&self, items: &[(&[u8], &[u8])]) -> bool {
        let signatures: Option<Vec<schnorrkel::Signature>> = items
            .iter()
            .map(|(_, s)| <[u8; 64]>::try_from(*s).ok().and_then(|b| schnorrkel::Signature::from_bytes(&b).ok()))
            .collect();
        let Some(signatures) = signatures else { return false };
        let context = schnorrkel::signing_context(SIGNING_CONTEXT);
        let transcripts = items.iter().map(|(m, _)| context.bytes(m));
        let keys = vec![self.key; items.len()];
        schnorrkel::verify_batch(transcripts, &signatures, &keys, true).is_ok()
    }
}

/// Why a secret is not an sr25519 signing key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("{0}")]
    Format(String),
}

/// A hotkey's secret half, for signing (miner-side clients and tests; the executor itself only
/// verifies).
pub struct HotkeyPair {
    keypair: schnorrkel::Keypair,
    hotkey: Hotkey,
}

impl fmt::Debug for HotkeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "HotkeyPair({})", self.hotkey)
    }
}

impl HotkeyPair {
    /// The pair of a 32-byte secret seed (the "secret seed" that `btcli`, `subkey inspect` and
    /// Bittensor's hotkey files (`secretSeed`) show), expanded as Substrate does.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        #[allow(clippy::expect_used)]
        let mini = schnorrkel::MiniSecretKey::from_bytes(seed).expect("32 bytes always make a mini secret key");
        Self::from_keypair(mini.expand_to_keypair(schnorrkel::ExpansionMode::Ed25519))
    }

    fn from_keypair(keypair: schnorrkel::Keypair) -> Self {
        let hotkey = Hotkey::from_public(keypair.public.to_bytes());
        Self { keypair, hotkey }
    }

    /// Parses a secret as operators hold it: a hex seed (`0x` optional, 32 bytes), a hex
    /// 64-byte sr25519 secret key (Bittensor's `privateKey`), or a Bittensor hotkey file (JSON
    /// with `secretSeed` or `privateKey`). Surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let text = text.trim();
        if text.starts_with('{') {
            let json: serde_json::Value =
                serde_json::from_str(text).map_err(|e| SecretError::Format(format!("hotkey file is not JSON: {e}")))?;
            for field in ["secretSeed", "privateKey"] {
                if let Some(value) = json.get(field).and_then(|v| v.as_str()) {
                    return Self::parse(value);
                }
            }
            return Err(SecretError::Format("hotkey file has neither `secretSeed` nor `privateKey`".to_owned()));
        }
        let hex = text.strip_prefix("0x").unwrap_or(text);
        let bytes = decode_hex(hex).ok_or_else(|| {
            SecretError::Format("secret is not hex (expected a 32-byte seed or a 64-byte secret key)".to_owned())
        })?;
        match bytes.len() {
            32 => {
                let mut seed = [0u8; 32];
                seed.copy_from_slice(&bytes);
                Ok(Self::from_seed(&seed))
            }
            64 => {
                let secret = schnorrkel::SecretKey::from_bytes(&bytes)
                    .map_err(|_| SecretError::Format("64-byte secret is not an sr25519 secret key".to_owned()))?;
                Ok(Self::from_keypair(secret.to_keypair()))
            }
            n => Err(SecretError::Format(format!(
                "secret is {n} bytes; expected a 32-byte seed or a 64-byte secret key"
            ))),
        }
    }

    pub fn hotkey(&self) -> &Hotkey {
        &self.hotkey
    }

    /// An sr25519 signature over `message` with the `substrate` context, as `bittensor-wallet`
    /// makes them.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.keypair.sign_simple(SIGNING_CONTEXT, message).to_bytes()
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

fn ss58_checksum(data: &[u8]) -> [u8; 2] {
    let mut hasher = Blake2b512::new();
    hasher.update(b"SS58PRE");
    hasher.update(data);
    let hash = hasher.finalize();
    [hash[0], hash[1]]
}

impl FromStr for Hotkey {
    type Err = AddressError;

    fn from_str(address: &str) -> Result<Self, Self::Err> {
        let data = bs58::decode(address).into_vec().map_err(|_| AddressError::NotBase58(address.to_owned()))?;
        if data.len() != 35 {
            return Err(AddressError::Length { address: address.to_owned(), len: data.len() });
        }
        if data[0] != SS58_PREFIX {
            return Err(AddressError::Prefix { address: address.to_owned(), prefix: data[0] });
        }
        if ss58_checksum(&data[..33]) != data[33..] {
            return Err(AddressError::Checksum(address.to_owned()));
        }
        let mut public = [0u8; 32];
        public.copy_from_slice(&data[1..33]);
        if schnorrkel::PublicKey::from_bytes(&public).is_err() {
            return Err(AddressError::NotAKey(address.to_owned()));
        }
        Ok(Self { public, address: address.to_owned() })
    }
}

impl fmt::Display for Hotkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.address)
    }
}

impl fmt::Debug for Hotkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hotkey({})", self.address)
    }
}

impl Serialize for Hotkey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.address)
    }
}

impl<'de> Deserialize<'de> for Hotkey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `//Alice`, the well-known Substrate development key.
    const ALICE: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
    const ALICE_PUBLIC: &str = "d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn decodes_and_reencodes_alice() {
        let key: Hotkey = ALICE.parse().unwrap();
        assert_eq!(hex(key.public_key()), ALICE_PUBLIC);
        assert_eq!(Hotkey::from_public(*key.public_key()).as_str(), ALICE);
    }

    #[test]
    fn rejects_bad_addresses() {
        fn check(input: &str, expected: &str) {
            let err = input.parse::<Hotkey>().unwrap_err().to_string();
            assert!(err.contains(expected), "{input}: {err}");
        }
        check("5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQZ", "checksum");
        check("0OIl", "not base58");
        check("5Grwva", "decodes to");
        check("", "decodes to 0 bytes");
        // Alice's key with Polkadot's prefix 0.
        check("15oF4uVJwmo4TdGW7VfQxNLavjCXviqxT9S1MgbjMNHr6Sp5", "network prefix 0");
    }

    /// Signatures made by the `bittensor-wallet` Python package with `Keypair.create_from_uri("//Alice")`
    /// (see tests/python for the live cross-check).
    #[test]
    fn verifies_bittensor_wallet_signatures() {
        let key: Hotkey = ALICE.parse().unwrap();
        let sig = unhex(
            "48be0d0ac730eac3162af1332e9fcfcbee398a2fb32c52aeae5afdbe11e4ce5ec6a5f6b54127ff642421311048ede20686f386a24240fc1ab1e654afc2fc0785",
        );
        key.verify(b"hello", &sig).unwrap();
        assert_eq!(key.verify(b"hellp", &sig), Err(SignatureError::Mismatch));
        assert_eq!(key.verify(b"hello", &sig[..63]), Err(SignatureError::Length(63)));
        let wrapped = unhex(
            "f85a95edbafb4d15893f7d273e47eea1877dbc8eddf7cefb851b04146586aa022b2ec6819e66650f78ab502ffc84be702ff7ac077ab364898160941c78e5a18d",
        );
        key.verify(b"executor wrapped", &wrapped).unwrap();
        let other: Hotkey = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty".parse().unwrap();
        assert_eq!(other.verify(b"hello", &sig), Err(SignatureError::Mismatch));
    }

    /// `//Alice`'s secret seed, as `subkey inspect //Alice` prints it.
    pub(crate) const ALICE_SEED: &str = "0xe5be9a5092b81bca64be81d212e7f2f9eba183bb7a90954f7b76361f6edb5c0a";

    #[test]
    fn signs_as_the_hotkey_the_seed_belongs_to() {
        let pair = HotkeyPair::parse(ALICE_SEED).unwrap();
        assert_eq!(pair.hotkey().as_str(), ALICE);
        let sig = pair.sign(b"canonical");
        pair.hotkey().verify(b"canonical", &sig).unwrap();
        let file = format!("{{\"secretSeed\": \"{ALICE_SEED}\", \"ss58Address\": \"{ALICE}\"}}");
        assert_eq!(HotkeyPair::parse(&file).unwrap().hotkey().as_str(), ALICE);
        // A hotkey file written by bittensor-wallet's `Wallet.create_new_hotkey`: its seed and its
        // 64-byte private key are the same key.
        let address = "5DJgjVDnqkSoLyKL7GTdXk1FKWnPmv83Ka7L4Vu1Faar5pLb";
        let seed = "0xd8d53639a3b2727ccdacc6027a5a55cf1598c21a6865022c1d8e1b1cdaeb1ec9";
        let private = "0x4d9a4150138065cabc5132994cec6973b89e0427c9abd2bbe021604f80b36a08\
                       07880753f3825b64bef5bcb0741a7d7c4c07ed953a1e51d10ec7359f0a3ef1a7";
        assert_eq!(HotkeyPair::parse(seed).unwrap().hotkey().as_str(), address);
        let from_private = HotkeyPair::parse(&format!("{{\"privateKey\": \"{private}\"}}")).unwrap();
        assert_eq!(from_private.hotkey().as_str(), address);
        from_private.hotkey().verify(b"m", &from_private.sign(b"m")).unwrap();
        // Batches: all good, one tampered, one `<Bytes>`-wrapped (valid alone, not in a batch).
        let verifier = pair.hotkey().verifier().unwrap();
        let messages: Vec<Vec<u8>> = (0..20).map(|i| format!("m{i}").into_bytes()).collect();
        let sigs: Vec<[u8; 64]> = messages.iter().map(|m| pair.sign(m)).collect();
        let items: Vec<(&[u8], &[u8])> =
            messages.iter().zip(&sigs).map(|(m, s)| (m.as_slice(), s.as_slice())).collect();
        assert!(verifier.verify_batch(&items));
        let mut tampered = items.clone();
        tampered[3].0 = b"other";
        assert!(!verifier.verify_batch(&tampered));
        let wrapped = pair.sign(b"<Bytes>m0</Bytes>");
        let mut with_wrapped = items.clone();
        with_wrapped[0].1 = &wrapped;
        assert!(!verifier.verify_batch(&with_wrapped) && verifier.verify(b"m0", &wrapped).is_ok());
        for (bad, expected) in [("0x12", "1 bytes"), ("zz", "not hex"), ("{}", "neither"), ("{", "not JSON")] {
            let err = HotkeyPair::parse(bad).unwrap_err().to_string();
            assert!(err.contains(expected), "{bad}: {err}");
        }
    }
}
