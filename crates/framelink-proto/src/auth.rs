//! Authenticated session resumption (section 12.3 of `docs/PROTOCOL.md`): the secret the
//! accepting side issues with a new session, the nonce it puts in every offer, and the proof a
//! requester sends to resume.
//!
//! Knowing a session id is not enough to resume a session: the requester must prove it holds
//! the session's secret, bound to the nonce of this very connection, so a secret travels once
//! (in the RESUME that created the session) and a recorded proof is worthless on any other
//! connection.
//!
//! ```text
//! proof = HMAC-SHA256(key = secret, "framelink resume v1" || session_id || nonce || delivered)
//! ```
//!
//! with `delivered` as 8 big-endian bytes. Proofs are checked in constant time.
//!
//! Unlike the rest of the crate, which takes all randomness from its caller, secrets and nonces
//! come from the operating system's generator ([`getrandom`]): an API that asked callers for
//! secret key material would be one more place to get it wrong.
//!
//! ```
//! use framelink_proto::auth::{resume_proof, ResumeProof, SessionSecret};
//!
//! let secret = SessionSecret::random();
//! let (id, nonce) = ([7; 16], [9; 16]);
//! let proof = ResumeProof { id, nonce, delivered: 3, mac: resume_proof(&secret, &id, &nonce, 3) };
//! assert!(proof.verify(&secret));
//! assert!(!proof.verify(&SessionSecret::random()));
//! // The same proof bound to another connection's nonce is refused.
//! assert!(!ResumeProof { nonce: [1; 16], ..proof }.verify(&secret));
//! ```

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Bytes of a session secret (128 bits).
pub const SECRET_LEN: usize = 16;
/// Bytes of the nonce in an offer.
pub const NONCE_LEN: usize = 16;
/// Bytes of a resume proof (an HMAC-SHA256 tag).
pub const PROOF_LEN: usize = 32;

/// The label every proof starts with, so that the key is never used for another purpose.
const PROOF_LABEL: &[u8] = b"framelink resume v1";

/// A session's secret: issued by the accepting side in the RESUME that creates the session,
/// and proved (never sent again) by the requester to resume it.
///
/// `Debug` does not print it; equality is checked in constant time.
#[derive(Clone)]
pub struct SessionSecret([u8; SECRET_LEN]);

impl SessionSecret {
    /// A fresh secret from the operating system's generator.
    ///
    /// # Panics
    ///
    /// If the operating system has no randomness to give (it always has on supported systems);
    /// a predictable secret would be worse than stopping.
    pub fn random() -> Self {
        SessionSecret(random_bytes())
    }

    /// A secret received on the wire (or restored from storage).
    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> Self {
        SessionSecret(bytes)
    }

    /// The secret's bytes, to put in a RESUME or to store.
    pub fn as_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }
}

impl fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionSecret(..)")
    }
}

impl PartialEq for SessionSecret {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for SessionSecret {}

/// A fresh nonce for an offer (one per connection).
///
/// # Panics
///
/// As [`SessionSecret::random`].
pub fn random_nonce() -> [u8; NONCE_LEN] {
    random_bytes()
}

/// 16 random bytes (a session id, for instance).
///
/// # Panics
///
/// As [`SessionSecret::random`].
pub fn random_bytes() -> [u8; 16] {
    let mut bytes = [0; 16];
    getrandom::getrandom(&mut bytes).expect("the operating system's random number generator");
    bytes
}

fn keyed(
    secret: &SessionSecret,
    id: &[u8; 16],
    nonce: &[u8; NONCE_LEN],
    delivered: u64,
) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(PROOF_LABEL);
    mac.update(id);
    mac.update(nonce);
    mac.update(&delivered.to_be_bytes());
    mac
}

/// The proof that resumes session `id` on the connection whose offer carried `nonce`, with the
/// requester's `delivered`.
pub fn resume_proof(
    secret: &SessionSecret,
    id: &[u8; 16],
    nonce: &[u8; NONCE_LEN],
    delivered: u64,
) -> [u8; PROOF_LEN] {
    keyed(secret, id, nonce, delivered)
        .finalize()
        .into_bytes()
        .into()
}

/// What a requester presented to resume a session: reported by the accepting side's
/// [`Connection`](crate::connection::Connection) in
/// [`Event::SessionRequest`](crate::connection::Event::SessionRequest), for whoever keeps the
/// sessions to check against the session's secret before handing the session over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeProof {
    /// The session asked for.
    pub id: [u8; 16],
    /// The nonce this connection's offer carried.
    pub nonce: [u8; NONCE_LEN],
    /// The requester's announced `delivered`.
    pub delivered: u64,
    /// The AUTH message's tag.
    pub mac: [u8; PROOF_LEN],
}

impl ResumeProof {
    /// True when the proof was made with `secret` (checked in constant time).
    pub fn verify(&self, secret: &SessionSecret) -> bool {
        keyed(secret, &self.id, &self.nonce, self.delivered)
            .verify_slice(&self.mac)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proof_binds_secret_id_nonce_and_delivered() {
        let secret = SessionSecret::from_bytes([0x11; 16]);
        let good = ResumeProof {
            id: [0x22; 16],
            nonce: [0x33; 16],
            delivered: 5,
            mac: resume_proof(&secret, &[0x22; 16], &[0x33; 16], 5),
        };
        assert!(good.verify(&secret));
        assert!(!good.verify(&SessionSecret::from_bytes([0x12; 16])));
        assert!(!ResumeProof {
            id: [0x23; 16],
            ..good.clone()
        }
        .verify(&secret));
        assert!(!ResumeProof {
            nonce: [0x34; 16],
            ..good.clone()
        }
        .verify(&secret));
        assert!(!ResumeProof {
            delivered: 6,
            ..good.clone()
        }
        .verify(&secret));
        let mut mac = good.mac;
        mac[31] ^= 1;
        assert!(!ResumeProof { mac, ..good }.verify(&secret));
    }

    #[test]
    fn secrets_and_nonces_differ_each_time_and_do_not_print() {
        assert_ne!(SessionSecret::random(), SessionSecret::random());
        assert_ne!(random_nonce(), random_nonce());
        assert_eq!(
            format!("{:?}", SessionSecret::from_bytes([1; 16])),
            "SessionSecret(..)"
        );
    }
}
