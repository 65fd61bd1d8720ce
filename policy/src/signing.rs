//! Ed25519 keys and detached signatures over a pack's exact bytes.
//!
//! File formats (interoperable with OpenSSL):
//! * private key `NAME`: PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), mode 0600
//!   (`openssl genpkey -algorithm ed25519` writes the same format);
//! * public key `NAME.pub`: SubjectPublicKeyInfo PEM
//!   (`-----BEGIN PUBLIC KEY-----`, as `openssl pkey -pubout` writes). A
//!   single line of base64 holding the 32 raw key bytes is accepted too;
//! * signature `PACK.sig`: one line of standard base64 (with padding) of the
//!   64-byte Ed25519 signature over the pack file's bytes, exactly as
//!   stored, then a newline (`openssl pkeyutl -sign -rawin` output, base64'd).
//!
//! Key id: the first 8 bytes of SHA-256 over the 32 raw public-key bytes,
//! as 16 lowercase hex digits.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::spki::{DecodePublicKey, EncodePublicKey};
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer};
use sha2::{Digest, Sha256};

/// An Ed25519 private key (re-exported so callers need not depend on ed25519-dalek).
pub use ed25519_dalek::SigningKey;
/// An Ed25519 public key (re-exported so callers need not depend on ed25519-dalek).
pub use ed25519_dalek::VerifyingKey;

/// Why a key or signature operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `keygen` refuses to overwrite a key.
    #[error(
        "{path} already exists; refusing to overwrite a key (choose another --out or remove it)"
    )]
    Exists {
        /// The file that exists.
        path: PathBuf,
    },
    /// The OS random source failed.
    #[error("could not get random bytes from the OS: {0}")]
    Random(String),
    /// A key file is not in a format we read.
    #[error("{path}: {what}")]
    BadKey {
        /// The file (or `<text>`).
        path: PathBuf,
        /// What is wrong and what was expected.
        what: String,
    },
    /// The signature file is not base64 of 64 bytes.
    #[error("{path}: not a signature: expected one line of base64 holding 64 bytes ({what})")]
    BadSignatureEncoding {
        /// The signature file.
        path: PathBuf,
        /// Detail.
        what: String,
    },
    /// The signature is well-formed but verifies under none of the keys.
    #[error(
        "signature does not match: the pack was changed after signing, or it was signed by a key other than {}",
        key_list(.trusted)
    )]
    Mismatch {
        /// Ids of the keys tried.
        trusted: Vec<KeyId>,
    },
    /// No trusted keys were given.
    #[error("no trusted public key given (use --policy-pubkey / --pubkey)")]
    NoKeys,
}

fn key_list(keys: &[KeyId]) -> String {
    match keys {
        [one] => format!("key id {one}"),
        many => format!(
            "any of the trusted key ids {}",
            many.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SigningError + '_ {
    move |source| SigningError::Io {
        path: path.to_owned(),
        source,
    }
}

// === impl KeyId ===

/// First 8 bytes of SHA-256 of the raw public key, shown as hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// The id of a public key.
    pub fn of(key: &VerifyingKey) -> KeyId {
        let digest = Sha256::digest(key.as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Lowercase hex of SHA-256 over `bytes` (pack digests, pins).
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// === keys ===

/// A new random signing key from the OS random source.
pub fn generate_key() -> Result<SigningKey, SigningError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| SigningError::Random(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// `NAME.pub` for a private key path `NAME`.
pub fn public_key_path(private: &Path) -> PathBuf {
    let mut s = private.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// `PACK.sig` for a pack path.
pub fn signature_path(pack: &Path) -> PathBuf {
    let mut s = pack.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

/// Write a new key pair: `out` (PKCS#8 PEM, mode 0600, never overwritten)
/// and `out.pub` (SPKI PEM). Returns the key id.
pub fn write_keypair(out: &Path, key: &SigningKey) -> Result<KeyId, SigningError> {
    let pub_path = public_key_path(out);
    for p in [out, pub_path.as_path()] {
        if p.exists() {
            return Err(SigningError::Exists { path: p.to_owned() });
        }
    }
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| SigningError::BadKey {
            path: out.to_owned(),
            what: format!("cannot encode private key: {e}"),
        })?;
    let public = key.verifying_key();
    let pub_pem = public
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| SigningError::BadKey {
            path: pub_path.clone(),
            what: format!("cannot encode public key: {e}"),
        })?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(io_err(out))?;
    f.write_all(pem.as_bytes()).map_err(io_err(out))?;
    f.sync_all().map_err(io_err(out))?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&pub_path)
        .map_err(io_err(&pub_path))?;
    f.write_all(pub_pem.as_bytes()).map_err(io_err(&pub_path))?;
    f.sync_all().map_err(io_err(&pub_path))?;
    Ok(KeyId::of(&public))
}

/// Read a private key (PKCS#8 PEM).
pub fn read_signing_key(path: &Path) -> Result<SigningKey, SigningError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    if text.contains("PUBLIC KEY") {
        return Err(SigningError::BadKey {
            path: path.to_owned(),
            what: "this is a public key; sign with the private key (the file without .pub)".into(),
        });
    }
    SigningKey::from_pkcs8_pem(&text).map_err(|e| SigningError::BadKey {
        path: path.to_owned(),
        what: format!("not an Ed25519 private key in PKCS#8 PEM ({e})"),
    })
}

/// Parse a public key: SPKI PEM or one line of base64 of the 32 raw bytes.
pub fn parse_public_key(text: &str, origin: &Path) -> Result<VerifyingKey, SigningError> {
    let bad = |what: String| SigningError::BadKey {
        path: origin.to_owned(),
        what,
    };
    if text.contains("PRIVATE KEY") {
        return Err(bad(
            "this is a private key; give the public key (NAME.pub) and keep the private key secret"
                .into(),
        ));
    }
    if text.contains("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(text)
            .map_err(|e| bad(format!("not an Ed25519 public key in PEM ({e})")));
    }
    let raw = B64
        .decode(text.trim())
        .map_err(|_| bad("expected a PEM public key or base64 of 32 bytes".into()))?;
    let bytes: [u8; 32] = raw
        .try_into()
        .map_err(|_| bad("base64 key must hold exactly 32 bytes".into()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not a valid Ed25519 public key".into()))
}

/// Read a public key file (see [`parse_public_key`]).
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, SigningError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    parse_public_key(&text, path)
}

// === signatures ===

/// The signature file's text for `bytes`: base64 of the signature and a newline.
pub fn sign_bytes(key: &SigningKey, bytes: &[u8]) -> String {
    let sig: Signature = key.sign(bytes);
    let mut s = B64.encode(sig.to_bytes());
    s.push('\n');
    s
}

/// Verify a signature file's text over `bytes` with any of `keys`
/// (several keys allow rotation). Returns the id of the key that matched.
/// `origin` names the signature in errors.
pub fn verify_bytes(
    keys: &[VerifyingKey],
    bytes: &[u8],
    sig_text: &[u8],
    origin: &Path,
) -> Result<KeyId, SigningError> {
    if keys.is_empty() {
        return Err(SigningError::NoKeys);
    }
    let text = std::str::from_utf8(sig_text).map_err(|_| SigningError::BadSignatureEncoding {
        path: origin.to_owned(),
        what: "not text".into(),
    })?;
    let raw = B64
        .decode(text.trim())
        .map_err(|e| SigningError::BadSignatureEncoding {
            path: origin.to_owned(),
            what: e.to_string(),
        })?;
    let raw: [u8; 64] =
        raw.try_into()
            .map_err(|v: Vec<u8>| SigningError::BadSignatureEncoding {
                path: origin.to_owned(),
                what: format!("{} bytes", v.len()),
            })?;
    let sig = Signature::from_bytes(&raw);
    keys.iter()
        .find(|k| k.verify_strict(bytes, &sig).is_ok())
        .map(KeyId::of)
        .ok_or_else(|| SigningError::Mismatch {
            trusted: keys.iter().map(KeyId::of).collect(),
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_tamper_wrong_key_rotation() {
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        let msg = b"{\"schema\":\"ccp.policy.v1\"}\n".to_vec();
        let sig = sign_bytes(&a, &msg);
        let o = Path::new("x.sig");
        let id = verify_bytes(&[a.verifying_key()], &msg, sig.as_bytes(), o).unwrap();
        assert_eq!(id, KeyId::of(&a.verifying_key()));
        // Rotation: either trusted key verifies.
        let id = verify_bytes(
            &[b.verifying_key(), a.verifying_key()],
            &msg,
            sig.as_bytes(),
            o,
        )
        .unwrap();
        assert_eq!(id, KeyId::of(&a.verifying_key()));
        // One changed byte.
        let mut t = msg.clone();
        t[3] ^= 1;
        let e = verify_bytes(&[a.verifying_key()], &t, sig.as_bytes(), o).unwrap_err();
        assert!(e.to_string().contains("signature does not match"), "{e}");
        // Wrong key.
        let e = verify_bytes(&[b.verifying_key()], &msg, sig.as_bytes(), o).unwrap_err();
        assert!(
            e.to_string()
                .contains(&KeyId::of(&b.verifying_key()).to_string())
        );
        // Garbage signature.
        let e = verify_bytes(&[a.verifying_key()], &msg, b"abc", o).unwrap_err();
        assert!(matches!(e, SigningError::BadSignatureEncoding { .. }));
        assert!(matches!(
            verify_bytes(&[], &msg, sig.as_bytes(), o),
            Err(SigningError::NoKeys)
        ));
    }

    #[test]
    fn key_files_round_trip_with_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("k");
        let key = generate_key().unwrap();
        let id = write_keypair(&out, &key).unwrap();
        assert_eq!(
            fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let back = read_signing_key(&out).unwrap();
        assert_eq!(back.to_bytes(), key.to_bytes());
        let public = read_public_key(&public_key_path(&out)).unwrap();
        assert_eq!(KeyId::of(&public), id);
        assert_eq!(id.to_string().len(), 16);
        // Raw base64 public keys work too.
        let raw = B64.encode(public.as_bytes());
        assert_eq!(parse_public_key(&raw, Path::new("p")).unwrap(), public);
        // Never overwrite, never confuse the halves.
        assert!(matches!(
            write_keypair(&out, &key),
            Err(SigningError::Exists { .. })
        ));
        assert!(read_signing_key(&public_key_path(&out)).is_err());
        assert!(
            read_public_key(&out)
                .unwrap_err()
                .to_string()
                .contains("private key")
        );
    }

    #[test]
    fn key_id_is_sha256_prefix() {
        let key = VerifyingKey::from_bytes(&[
            0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64,
            0x07, 0x3a, 0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68,
            0xf7, 0x07, 0x51, 0x1a,
        ])
        .unwrap();
        let expect = &sha256_hex(key.as_bytes())[..16];
        assert_eq!(KeyId::of(&key).to_string(), expect);
    }
}
