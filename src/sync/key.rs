//! Folder keys: who may read a synced folder and who may change it.
//!
//! A read-write key is 32 random bytes, the `seed`. Everything else is
//! derived from it, so the printed key is all a device needs:
//!
//! - an ed25519 signing key (`SigningKey::from_bytes(seed)`) and its public
//!   key `pk`, to sign index records: only read-write holders can sign;
//! - a read secret `read = SHA-256("p2pfile read secret v1" || seed)`, which
//!   opens the swarm, proves membership and names the folder.
//!
//! A read-only key carries `read || pk` (64 bytes): it can join, download
//! and check signatures, but not sign. The derivation is one-way, so a
//! read-only key never leads back to the seed.
//!
//! Printed forms: `p2pf-rw-<base32(seed)>` and `p2pf-ro-<base32(read || pk)>`,
//! RFC 4648 base32 without padding, lowercase (parsing accepts either case).
//!
//! The key material is secret: `Debug` shows only the folder id, and parse
//! errors never quote more than the key's first 12 characters.

use std::fmt;
use std::str::FromStr;

use data_encoding::BASE32_NOPAD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// Prefix of a printed read-write key.
const RW_PREFIX: &str = "p2pf-rw-";
/// Prefix of a printed read-only key.
const RO_PREFIX: &str = "p2pf-ro-";
/// Base32 characters of a read-write key body (32 bytes).
const RW_BODY_LEN: usize = 52;
/// Base32 characters of a read-only key body (64 bytes).
const RO_BODY_LEN: usize = 103;

/// Domain tags: each derivation hashes its own tag first, so no two derived
/// values can ever coincide or be substituted for one another.
const READ_TAG: &[u8] = b"p2pfile read secret v1";
const FOLDER_ID_TAG: &[u8] = b"p2pfile folder id v1";
const SWARM_TAG: &[u8] = b"p2pfile swarm v1";

/// Why a string is not a folder key. The messages never echo the key body.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum KeyError {
    /// Neither `p2pf-rw-` nor `p2pf-ro-` at the start.
    #[error("not a p2pfile folder key: it must start with p2pf-rw- or p2pf-ro-")]
    WrongPrefix,
    /// The body has the wrong number of characters (truncated or padded).
    #[error(
        "folder key {start}… has the wrong length: {expected} characters expected after the prefix, found {found}"
    )]
    WrongLength {
        /// The key's first 12 characters, to tell which key is meant.
        start: String,
        /// Characters a key of this kind has after its prefix.
        expected: usize,
        /// Characters found.
        found: usize,
    },
    /// A character outside the base32 alphabet, or unused trailing bits.
    #[error("folder key {start}… is not valid base32 at character {position} after the prefix")]
    BadBase32 {
        /// The key's first 12 characters.
        start: String,
        /// Offset of the offending character in the body.
        position: usize,
    },
    /// The public-key half of a read-only key is not a usable ed25519 point.
    #[error("read-only folder key {start}… holds an invalid public key")]
    BadPublicKey {
        /// The key's first 12 characters.
        start: String,
    },
    /// The operating system gave no randomness for a new key.
    #[error("cannot read randomness from the operating system")]
    Randomness(#[source] getrandom::Error),
}

/// A folder's public identity: first 16 bytes of
/// `SHA-256("p2pfile folder id v1" || read)`. Safe to show and log: it is a
/// one-way function of the read secret. Displayed as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FolderId(pub [u8; 16]);

impl fmt::Display for FolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for FolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FolderId({self})")
    }
}

/// A key to a synced folder: read-write (can sign changes) or read-only.
///
/// `Debug` is written by hand and shows only the folder id, so a key in a
/// log line or a panic message does not leak.
#[derive(Clone)]
pub enum FolderKey {
    /// Full access: holds the seed, as the signing key.
    ReadWrite {
        /// The ed25519 signing key; its 32 secret bytes are the seed.
        signing: SigningKey,
        /// The read secret derived from the seed.
        read: [u8; 32],
    },
    /// Read access: the read secret and the public key only.
    ReadOnly {
        /// The read secret.
        read: [u8; 32],
        /// The folder's public key, to check signatures.
        pk: VerifyingKey,
    },
}

impl FolderKey {
    /// A new read-write key from the operating system's randomness.
    pub fn generate() -> Result<FolderKey, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(KeyError::Randomness)?;
        Ok(FolderKey::from_seed(seed))
    }

    /// The read-write key for `seed` (deterministic; tests pass seeds in).
    pub fn from_seed(seed: [u8; 32]) -> FolderKey {
        let read: [u8; 32] = Sha256::new()
            .chain_update(READ_TAG)
            .chain_update(seed)
            .finalize()
            .into();
        FolderKey::ReadWrite {
            signing: SigningKey::from_bytes(&seed),
            read,
        }
    }

    /// The read-only key of this folder (itself if already read-only).
    pub fn read_only(&self) -> FolderKey {
        FolderKey::ReadOnly {
            read: *self.read_secret(),
            pk: self.public_key(),
        }
    }

    /// Whether this key can sign changes.
    pub fn can_write(&self) -> bool {
        matches!(self, FolderKey::ReadWrite { .. })
    }

    /// The folder's public identity.
    pub fn folder_id(&self) -> FolderId {
        let digest = Sha256::new()
            .chain_update(FOLDER_ID_TAG)
            .chain_update(self.read_secret())
            .finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        FolderId(id)
    }

    /// The BitTorrent info-hash a sync torrent uses on the wire: the first
    /// 20 bytes of `SHA-256("p2pfile swarm v1" || read || info_hash)`.
    ///
    /// The content's own info-hash is public (anyone who has the bytes can
    /// compute it), so using it on the wire would let any holder of the same
    /// file join the folder's swarm. Mixing in the read secret means a
    /// process without the key cannot compute or recognise the swarm.
    pub fn swarm_hash(&self, content_info_hash: [u8; 20]) -> [u8; 20] {
        let digest = Sha256::new()
            .chain_update(SWARM_TAG)
            .chain_update(self.read_secret())
            .chain_update(content_info_hash)
            .finalize();
        let mut hash = [0u8; 20];
        hash.copy_from_slice(&digest[..20]);
        hash
    }

    /// Proof of holding the read secret, bound to `context`:
    /// HMAC-SHA256(read, context). LAN announcements and the index-exchange
    /// handshake send it over a fresh context (nonce, addresses) so it
    /// cannot be replayed elsewhere.
    pub fn proof(&self, context: &[u8]) -> [u8; 32] {
        self.mac(context).finalize().into_bytes().into()
    }

    /// Checks a [`proof`](Self::proof) in constant time.
    pub fn verify_proof(&self, context: &[u8], proof: &[u8]) -> bool {
        self.mac(context).verify_slice(proof).is_ok()
    }

    /// Signs `msg` with the folder's key; `None` for a read-only key.
    ///
    /// The message is signed as given: callers put a domain tag and the
    /// folder id in it (see `index::FileRecord::sign`).
    pub fn sign(&self, msg: &[u8]) -> Option<[u8; 64]> {
        match self {
            FolderKey::ReadWrite { signing, .. } => Some(signing.sign(msg).to_bytes()),
            FolderKey::ReadOnly { .. } => None,
        }
    }

    /// Whether `sig` is the folder key's signature over `msg`. Uses strict
    /// verification (no malleable or small-order signatures).
    pub fn verify(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        self.public_key()
            .verify_strict(msg, &Signature::from_bytes(sig))
            .is_ok()
    }

    fn read_secret(&self) -> &[u8; 32] {
        match self {
            FolderKey::ReadWrite { read, .. } | FolderKey::ReadOnly { read, .. } => read,
        }
    }

    fn public_key(&self) -> VerifyingKey {
        match self {
            FolderKey::ReadWrite { signing, .. } => signing.verifying_key(),
            FolderKey::ReadOnly { pk, .. } => *pk,
        }
    }

    fn mac(&self, context: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.read_secret())
            .expect("bug: HMAC takes keys of any length");
        mac.update(context);
        mac
    }
}

impl fmt::Display for FolderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (prefix, body) = match self {
            FolderKey::ReadWrite { signing, .. } => {
                (RW_PREFIX, BASE32_NOPAD.encode(signing.as_bytes()))
            }
            FolderKey::ReadOnly { read, pk } => {
                let mut bytes = [0u8; 64];
                bytes[..32].copy_from_slice(read);
                bytes[32..].copy_from_slice(pk.as_bytes());
                (RO_PREFIX, BASE32_NOPAD.encode(&bytes))
            }
        };
        write!(f, "{prefix}{}", body.to_ascii_lowercase())
    }
}

impl fmt::Debug for FolderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.can_write() {
            "ReadWrite"
        } else {
            "ReadOnly"
        };
        write!(f, "FolderKey::{kind}({})", self.folder_id())
    }
}

impl FromStr for FolderKey {
    type Err = KeyError;

    /// Parses either printed form; surrounding whitespace (a pasted newline)
    /// is ignored and the body may be in either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let start: String = s.chars().take(12).collect();
        let (body, expected, rw) = if let Some(body) = s.strip_prefix(RW_PREFIX) {
            (body, RW_BODY_LEN, true)
        } else if let Some(body) = s.strip_prefix(RO_PREFIX) {
            (body, RO_BODY_LEN, false)
        } else {
            return Err(KeyError::WrongPrefix);
        };
        // Count characters, not bytes, so a stray multi-byte character is
        // reported as bad base32 below rather than as a length problem.
        let found = body.chars().count();
        if found != expected {
            return Err(KeyError::WrongLength {
                start,
                expected,
                found,
            });
        }
        let bytes = BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|e| KeyError::BadBase32 {
                start: start.clone(),
                position: e.position,
            })?;
        if rw {
            let seed: [u8; 32] = bytes
                .try_into()
                .expect("bug: 52 base32 characters are 32 bytes");
            return Ok(FolderKey::from_seed(seed));
        }
        let mut read = [0u8; 32];
        read.copy_from_slice(&bytes[..32]);
        let mut pk_bytes = [0u8; 32];
        pk_bytes.copy_from_slice(&bytes[32..]);
        // A small-order point would verify forged signatures under the
        // non-strict rules; refuse it at the door as well.
        let pk = VerifyingKey::from_bytes(&pk_bytes)
            .ok()
            .filter(|pk| !pk.is_weak())
            .ok_or(KeyError::BadPublicKey { start })?;
        Ok(FolderKey::ReadOnly { read, pk })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> FolderKey {
        FolderKey::from_seed([n; 32])
    }

    fn ro_with_pk(pk: [u8; 32]) -> String {
        let mut bytes = [7u8; 64];
        bytes[32..].copy_from_slice(&pk);
        format!(
            "{RO_PREFIX}{}",
            BASE32_NOPAD.encode(&bytes).to_ascii_lowercase()
        )
    }

    #[test]
    fn display_fromstr_round_trips() {
        for k in [key(1), key(1).read_only(), FolderKey::generate().unwrap()] {
            let s = k.to_string();
            let back: FolderKey = s.parse().unwrap();
            assert_eq!(back.to_string(), s);
            assert_eq!(back.can_write(), k.can_write());
            assert_eq!(back.folder_id(), k.folder_id());
            assert_eq!(s, s.to_lowercase());
            assert_eq!(
                format!("{}{}", &s[..8], s[8..].to_uppercase())
                    .parse::<FolderKey>()
                    .unwrap()
                    .to_string(),
                s
            );
        }
        assert!(key(1).to_string().starts_with("p2pf-rw-"));
        assert_eq!(key(1).to_string().len(), RW_PREFIX.len() + RW_BODY_LEN);
        assert!(key(1).read_only().to_string().starts_with("p2pf-ro-"));
        assert_eq!(
            key(1).read_only().to_string().len(),
            RO_PREFIX.len() + RO_BODY_LEN
        );
        let padded = format!(" {}\n", key(2));
        assert_eq!(
            padded.parse::<FolderKey>().unwrap().to_string(),
            key(2).to_string()
        );
    }

    #[test]
    fn generated_keys_differ() {
        let a = FolderKey::generate().unwrap();
        let b = FolderKey::generate().unwrap();
        assert_ne!(a.to_string(), b.to_string());
    }

    #[test]
    fn read_only_is_deterministic_and_shares_the_folder() {
        let rw = key(3);
        let ro = rw.read_only();
        assert_eq!(ro.to_string(), key(3).read_only().to_string());
        assert_eq!(ro.read_only().to_string(), ro.to_string());
        assert_ne!(ro.to_string(), rw.to_string());
        assert!(rw.can_write());
        assert!(!ro.can_write());
        assert_eq!(ro.folder_id(), rw.folder_id());
        assert_ne!(key(4).folder_id(), rw.folder_id());
        assert_eq!(rw.folder_id().to_string().len(), 32);
        assert_eq!(ro.swarm_hash([1; 20]), rw.swarm_hash([1; 20]));
        assert_eq!(ro.proof(b"ctx"), rw.proof(b"ctx"));
    }

    #[test]
    fn read_only_key_cannot_sign_but_verifies() {
        let rw = key(5);
        let ro = rw.read_only();
        assert_eq!(ro.sign(b"msg"), None);
        let sig = rw.sign(b"msg").unwrap();
        assert!(ro.verify(b"msg", &sig));
        assert!(rw.verify(b"msg", &sig));
    }

    #[test]
    fn signatures_bind_key_and_message() {
        let a = key(6);
        let b = key(7);
        let sig = a.sign(b"hello").unwrap();
        assert!(a.verify(b"hello", &sig));
        assert!(!b.verify(b"hello", &sig));
        assert!(!b.read_only().verify(b"hello", &sig));
        assert!(!a.verify(b"hellO", &sig));
        let mut bad = sig;
        bad[10] ^= 1;
        assert!(!a.verify(b"hello", &bad));
    }

    #[test]
    fn proofs_verify_only_for_the_same_secret_and_context() {
        let a = key(8);
        let p = a.proof(b"nonce-1");
        assert!(a.verify_proof(b"nonce-1", &p));
        assert!(a.read_only().verify_proof(b"nonce-1", &p));
        assert!(!a.verify_proof(b"nonce-2", &p));
        assert!(!key(9).verify_proof(b"nonce-1", &p));
        assert!(!a.verify_proof(b"nonce-1", &p[..31]));
        let mut bad = p;
        bad[0] ^= 0x80;
        assert!(!a.verify_proof(b"nonce-1", &bad));
    }

    #[test]
    fn swarm_hash_differs_per_key_and_per_info_hash() {
        let a = key(10);
        let h = a.swarm_hash([1; 20]);
        assert_ne!(h, [1; 20]);
        assert_ne!(h, a.swarm_hash([2; 20]));
        assert_ne!(h, key(11).swarm_hash([1; 20]));
        assert_eq!(h, a.swarm_hash([1; 20]));
    }

    #[test]
    fn debug_shows_no_key_material() {
        let rw = key(12);
        let shown = format!("{rw:?} {:?}", rw.read_only());
        let body = &rw.to_string()[RW_PREFIX.len()..];
        assert!(!shown.contains(&body[..10]), "{shown}");
        assert!(!shown.to_lowercase().contains(&body[..10]), "{shown}");
        assert!(shown.contains(&rw.folder_id().to_string()), "{shown}");
        assert!(shown.contains("ReadWrite") && shown.contains("ReadOnly"));
    }

    #[test]
    fn parse_errors_name_the_problem_without_the_key() {
        let rw = key(13).to_string();
        let ro = key(13).read_only().to_string();

        let e = "magnet:?xt=urn:btih:abc".parse::<FolderKey>().unwrap_err();
        assert_eq!(e, KeyError::WrongPrefix);
        assert_eq!(
            e.to_string(),
            "not a p2pfile folder key: it must start with p2pf-rw- or p2pf-ro-"
        );
        assert_eq!(
            rw.replace("rw", "rx").parse::<FolderKey>().unwrap_err(),
            KeyError::WrongPrefix
        );

        let e = rw[..rw.len() - 1].parse::<FolderKey>().unwrap_err();
        assert!(
            matches!(
                e,
                KeyError::WrongLength {
                    expected: 52,
                    found: 51,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = format!("{ro}a").parse::<FolderKey>().unwrap_err();
        assert!(
            matches!(
                e,
                KeyError::WrongLength {
                    expected: 103,
                    found: 104,
                    ..
                }
            ),
            "{e:?}"
        );

        let mut bad = rw.clone();
        bad.replace_range(20..21, "1");
        let e = bad.parse::<FolderKey>().unwrap_err();
        assert!(
            matches!(e, KeyError::BadBase32 { position: 12, .. }),
            "{e:?}"
        );
        let mut bad = rw.clone();
        // One character, two bytes: still 52 characters, so not a length error.
        bad.replace_range(20..21, "é");
        let e = bad.parse::<FolderKey>().unwrap_err();
        assert!(matches!(e, KeyError::BadBase32 { .. }), "{e:?}");

        // The identity point (y = 1) is a small-order point: refused.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let e = ro_with_pk(identity).parse::<FolderKey>().unwrap_err();
        assert!(matches!(e, KeyError::BadPublicKey { .. }), "{e:?}");
        // Some y coordinate has no point on the curve; find one and check it.
        let off_curve = (0u8..=255)
            .map(|b| [b; 32])
            .find(|pk| VerifyingKey::from_bytes(pk).is_err())
            .expect("some byte pattern is not a curve point");
        let e = ro_with_pk(off_curve).parse::<FolderKey>().unwrap_err();
        assert!(matches!(e, KeyError::BadPublicKey { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "read-only folder key {}… holds an invalid public key",
                &ro_with_pk(off_curve)[..12]
            )
        );

        // No message quotes more than the first 12 characters.
        for (input, secret) in [
            (rw[..rw.len() - 1].to_string(), &rw[12..]),
            (format!("{ro}a"), &ro[12..]),
            (ro_with_pk(identity), &ro_with_pk(identity)[12..]),
        ] {
            let msg = input.parse::<FolderKey>().unwrap_err().to_string();
            assert!(!msg.contains(&secret[..8]), "{msg}");
        }
    }

    mod properties {
        use super::*;
        use p2pfile_engine::arb::{apply, config, edits};
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(config(1024))]

            #[test]
            fn every_key_round_trips(seed in any::<[u8; 32]>(), read_only in any::<bool>()) {
                let k = FolderKey::from_seed(seed);
                let k = if read_only { k.read_only() } else { k };
                let back: FolderKey = k.to_string().parse().unwrap();
                prop_assert_eq!(back.to_string(), k.to_string());
                prop_assert_eq!(back.folder_id(), k.folder_id());
                prop_assert_eq!(back.can_write(), k.can_write());
            }

            /// A typed key with a few characters wrong, missing or extra:
            /// refused or read, never a panic.
            #[test]
            fn edited_keys_parse_or_error(seed in any::<[u8; 32]>(), read_only in any::<bool>(), edits in edits()) {
                let k = FolderKey::from_seed(seed);
                let k = if read_only { k.read_only() } else { k };
                if let Ok(text) = String::from_utf8(apply(k.to_string().as_bytes(), &edits)) {
                    if let Ok(back) = text.parse::<FolderKey>() {
                        prop_assert_eq!(back.to_string().parse::<FolderKey>().map(|b| b.folder_id()), Ok(back.folder_id()));
                    }
                }
            }

            #[test]
            fn arbitrary_text_parses_or_errors(text in "(p2pf-r[wo]-)?\\PC{0,110}") {
                let _ = text.parse::<FolderKey>();
            }
        }
    }
}
