//! Ed25519 signatures over a model and over the log's pointers to it.
//!
//! A model's signature covers its manifest (name and version included) with its weights digest,
//! so a version written straight to the models topic by anyone who can write there is not served
//! by a predictor that trusts only known keys, and a signed version cannot be replayed under
//! another name or number (the digest alone proves only that the weights match the manifest
//! written next to them). A pointer's signature covers what moves a predictor without a new
//! model: an alias move (with its cutover and its sequence number, which only grows) and a
//! deletion; the registry signs those with its own key.
//!
//! Keys are standard PEM files: PKCS#8 private keys and SPKI public keys, as
//! `openssl genpkey -algorithm ed25519` makes them and `kappa keys new` writes them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use arc_swap::ArcSwap;
use ed25519_dalek::{
    Signature, Signer as _, SigningKey, VerifyingKey,
    pkcs8::{
        DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _,
        spki::der::pem::LineEnding,
    },
};
use prost::Message as _;
use sha2::{Digest as _, Sha256};

use crate::ModelManifest;
use kappa_api::model::AliasRecord;

/// Separate Kappa's signatures from anything else the same key might sign, and from each other:
/// a model's signature is never a valid pointer's. (The first model signatures left the version
/// out; their domain, `kappa.model.v1.signature`, is not accepted any more.)
const MODEL_DOMAIN: &[u8] = b"kappa.model.v1.signature.versioned\n";
const ALIAS_DOMAIN: &[u8] = b"kappa.model.v1.alias\n";
const DELETION_DOMAIN: &[u8] = b"kappa.model.v1.deletion\n";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the version is not signed, and only versions signed by a trusted key are served here")]
    Unsigned,
    #[error("it is signed by key {0}, which is not among the trusted keys")]
    UntrustedKey(String),
    #[error(
        "its signature does not verify with key {0}: the manifest or weights were changed after signing, or the signature is forged"
    )]
    BadSignature(String),
    #[error("{0}")]
    Key(String),
}

/// The bytes a model's signature covers: the manifest as the publisher sent it, with its name,
/// the version it is published as and the digest of its weights, and without what the registry
/// stamps or reads from the weights (the publish time; an ONNX graph's inputs and outputs, bound
/// through the digest already).
pub fn signed_bytes(manifest: &ModelManifest) -> Vec<u8> {
    let mut content = manifest.clone();
    content.created_at_ms = 0;
    if let Some(onnx) = content.onnx.as_mut() {
        onnx.graph = None;
    }
    let mut bytes = MODEL_DOMAIN.to_vec();
    bytes.extend(content.encode_to_vec());
    bytes
}

/// A record of the models log that moves a predictor without a new model.
#[derive(Debug, Clone, Copy)]
pub enum Pointer<'a> {
    /// An alias moved: the record as written, its own signature fields ignored.
    Alias(&'a AliasRecord),
    /// A version deleted.
    Deletion { name: &'a str, version: u64 },
}

impl Pointer<'_> {
    fn signed_bytes(self) -> Vec<u8> {
        match self {
            Self::Alias(record) => {
                let mut bytes = ALIAS_DOMAIN.to_vec();
                let content = AliasRecord {
                    signature: Vec::new(),
                    signing_key_id: String::new(),
                    ..record.clone()
                };
                bytes.extend(content.encode_to_vec());
                bytes
            }
            Self::Deletion { name, version } => {
                let mut bytes = DELETION_DOMAIN.to_vec();
                // Length-prefixed, so no two (name, version) pairs share bytes.
                bytes.extend((name.len() as u64).to_be_bytes());
                bytes.extend(name.as_bytes());
                bytes.extend(version.to_be_bytes());
                bytes
            }
        }
    }
}

/// A key's id: the first 16 hex digits of the SHA-256 of its raw 32-byte public key.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// A private key that signs models.
#[derive(Clone)]
pub struct ModelSigner {
    // Boxed: the expanded key is large, and signers travel inside configuration enums.
    key: Box<SigningKey>,
    id: String,
}

/// Shows the key id, never the key.
impl std::fmt::Debug for ModelSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelSigner")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ModelSigner {
    /// For a flag's value parser: the key at `path`, read when the flag is parsed.
    pub fn parse_flag(path: &str) -> Result<Self, String> {
        Self::read(Path::new(path)).map_err(|e| e.to_string())
    }

    /// A fresh key from 32 random bytes.
    pub fn generate() -> Self {
        let mut seed = [0_u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut seed);
        Self::from_key(SigningKey::from_bytes(&seed))
    }

    fn from_key(key: SigningKey) -> Self {
        let id = key_id(&key.verifying_key());
        Self { key: Box::new(key), id }
    }

    /// Reads a PKCS#8 PEM private key.
    pub fn read(path: &Path) -> Result<Self, SignatureError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SignatureError::Key(format!("cannot read the signing key {}: {e}", path.display())))?;
        SigningKey::from_pkcs8_pem(&text).map(Self::from_key).map_err(|e| {
            SignatureError::Key(format!(
                "{} is not an Ed25519 PKCS#8 PEM private key: {e}",
                path.display()
            ))
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// (signature, key id) for `manifest`, whose version, weights digest and size must already
    /// be set.
    pub fn sign(&self, manifest: &ModelManifest) -> (Vec<u8>, String) {
        self.sign_bytes(&signed_bytes(manifest))
    }

    /// (signature, key id) for a pointer record.
    pub fn sign_pointer(&self, pointer: Pointer) -> (Vec<u8>, String) {
        self.sign_bytes(&pointer.signed_bytes())
    }

    fn sign_bytes(&self, bytes: &[u8]) -> (Vec<u8>, String) {
        (self.key.sign(bytes).to_bytes().to_vec(), self.id.clone())
    }

    pub fn private_pem(&self) -> Result<String, SignatureError> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.to_string())
            .map_err(|e| SignatureError::Key(e.to_string()))
    }

    pub fn public_pem(&self) -> Result<String, SignatureError> {
        self.key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| SignatureError::Key(e.to_string()))
    }
}

type KeyMap = BTreeMap<String, VerifyingKey>;

/// The public keys a predictor (or registry) trusts, by key id. Clones share the keys read from
/// the file or directory, so [`TrustedKeys::reload`] reaches every holder; keys added with
/// [`TrustedKeys::with`] stay trusted whatever the files say.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    loaded: Arc<ArcSwap<KeyMap>>,
    pinned: Arc<KeyMap>,
    source: Option<PathBuf>,
}

impl TrustedKeys {
    /// A PEM public key file, or a directory of them (every `*.pem` / `*.pub` file in it: a
    /// mounted ConfigMap). An empty directory trusts nothing, which is refused: it would make
    /// every version unservable.
    pub fn load(path: &Path) -> Result<Self, SignatureError> {
        Ok(Self {
            loaded: Arc::new(ArcSwap::from_pointee(Self::read_keys(path)?)),
            pinned: Arc::default(),
            source: Some(path.to_path_buf()),
        })
    }

    /// The file or directory the keys come from, if they came from one.
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// Reads the keys again from their file or directory; on an error nothing changes.
    pub fn reload(&self) -> Result<(), SignatureError> {
        if let Some(path) = &self.source {
            self.loaded.store(Arc::new(Self::read_keys(path)?));
        }
        Ok(())
    }

    /// Trusts none of the loaded keys (the pinned ones stay) until a reload succeeds: what an
    /// unreadable key directory means, since a key may have been removed to revoke it.
    pub fn distrust_loaded(&self) {
        self.loaded.store(Arc::default());
    }

    fn read_keys(path: &Path) -> Result<KeyMap, SignatureError> {
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| SignatureError::Key(format!("cannot list {}: {e}", path.display())))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "pem" || e == "pub"))
                .collect();
            files.sort();
            files
        } else {
            vec![path.to_path_buf()]
        };
        let mut keys = BTreeMap::new();
        for file in &files {
            let text = std::fs::read_to_string(file)
                .map_err(|e| SignatureError::Key(format!("cannot read {}: {e}", file.display())))?;
            let key = VerifyingKey::from_public_key_pem(&text).map_err(|e| {
                SignatureError::Key(format!("{} is not an Ed25519 public key in PEM: {e}", file.display()))
            })?;
            keys.insert(key_id(&key), key);
        }
        if keys.is_empty() {
            return Err(SignatureError::Key(format!(
                "{} holds no public key (*.pem or *.pub); every version would be refused",
                path.display()
            )));
        }
        Ok(keys)
    }

    /// For a flag's value parser: the keys at `path`, loaded when the flag is parsed.
    pub fn parse_flag(path: &str) -> Result<Self, String> {
        Self::load(Path::new(path)).map_err(|e| e.to_string())
    }

    pub fn ids(&self) -> Vec<String> {
        let loaded = self.loaded.load();
        let mut ids: Vec<String> = loaded.keys().chain(self.pinned.keys()).cloned().collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Whether `manifest` (as its version record holds it) carries a valid signature by a
    /// trusted key.
    pub fn verify(&self, manifest: &ModelManifest, signature: &[u8], key_id: &str) -> Result<(), SignatureError> {
        self.verify_bytes(&signed_bytes(manifest), signature, key_id)
    }

    /// Whether a pointer record carries a valid signature by a trusted key.
    pub fn verify_pointer(&self, pointer: Pointer, signature: &[u8], key_id: &str) -> Result<(), SignatureError> {
        self.verify_bytes(&pointer.signed_bytes(), signature, key_id)
    }

    /// Also trusts `key`, whatever the files say (the registry trusts its own pointer key
    /// beside the publishers').
    pub fn with(mut self, key: &ModelSigner) -> Self {
        let public = key.key.verifying_key();
        Arc::make_mut(&mut self.pinned).insert(key_id(&public), public);
        self
    }

    fn verify_bytes(&self, bytes: &[u8], signature: &[u8], key_id: &str) -> Result<(), SignatureError> {
        if signature.is_empty() {
            return Err(SignatureError::Unsigned);
        }
        let loaded = self.loaded.load();
        let key = self
            .pinned
            .get(key_id)
            .or_else(|| loaded.get(key_id))
            .ok_or_else(|| SignatureError::UntrustedKey(key_id.to_owned()))?;
        let signature =
            Signature::from_slice(signature).map_err(|_| SignatureError::BadSignature(key_id.to_owned()))?;
        // verify_strict refuses the malleable and small-order encodings plain verify accepts.
        key.verify_strict(bytes, &signature)
            .map_err(|_| SignatureError::BadSignature(key_id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::example::numbered_autoencoder;

    #[test]
    fn a_signature_binds_manifest_and_digest_and_only_trusted_keys_verify() {
        let signer = ModelSigner::generate();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ci.pem"), signer.public_pem().unwrap()).unwrap();
        let trusted = TrustedKeys::load(dir.path()).unwrap();
        assert_eq!(trusted.ids(), [signer.id()]);

        let mut manifest = numbered_autoencoder("fleet", 4, 2);
        manifest.version = 7;
        manifest.weights_sha256 = "ab".repeat(32);
        manifest.weights_size = 100;
        let (signature, id) = signer.sign(&manifest);
        // The publish time the registry stamps is not signed: a stored version still verifies.
        let mut stored = manifest.clone();
        stored.created_at_ms = 1_700_000_000_000;
        assert_eq!(trusted.verify(&stored, &signature, &id), Ok(()));

        // Name and version are: a signed version replayed as another number or model is refused.
        for replayed in [
            ModelManifest {
                version: 8,
                ..stored.clone()
            },
            ModelManifest {
                name: "other".into(),
                ..stored.clone()
            },
        ] {
            assert!(matches!(
                trusted.verify(&replayed, &signature, &id),
                Err(SignatureError::BadSignature(_))
            ));
        }

        let mut other_weights = stored.clone();
        other_weights.weights_sha256 = "cd".repeat(32);
        assert!(matches!(
            trusted.verify(&other_weights, &signature, &id),
            Err(SignatureError::BadSignature(_))
        ));
        let mut other_threshold = stored.clone();
        other_threshold.anomaly_threshold = 1e9;
        assert!(matches!(
            trusted.verify(&other_threshold, &signature, &id),
            Err(SignatureError::BadSignature(_))
        ));
        assert_eq!(trusted.verify(&stored, &[], ""), Err(SignatureError::Unsigned));
        let stranger = ModelSigner::generate();
        let (forged, stranger_id) = stranger.sign(&manifest);
        assert!(matches!(
            trusted.verify(&stored, &forged, &stranger_id),
            Err(SignatureError::UntrustedKey(_))
        ));
        assert!(matches!(
            trusted.verify(&stored, &forged, &id),
            Err(SignatureError::BadSignature(_))
        ));
        assert!(matches!(
            trusted.verify(&stored, &signature[..10], &id),
            Err(SignatureError::BadSignature(_))
        ));

        // A model's signature is never a pointer's, and a pointer's binds what it points at.
        let deletion = Pointer::Deletion {
            name: "fleet",
            version: 7,
        };
        assert!(trusted.verify_pointer(deletion, &signature, &id).is_err());
        let (signed_deletion, _) = signer.sign_pointer(deletion);
        assert_eq!(trusted.verify_pointer(deletion, &signed_deletion, &id), Ok(()));
        let other = Pointer::Deletion {
            name: "fleet",
            version: 6,
        };
        assert!(trusted.verify_pointer(other, &signed_deletion, &id).is_err());
        let mut moved = AliasRecord {
            name: "fleet".into(),
            alias: "production".into(),
            version: 7,
            sequence: 10,
            ..AliasRecord::default()
        };
        (moved.signature, moved.signing_key_id) = signer.sign_pointer(Pointer::Alias(&moved));
        assert_eq!(
            trusted.verify_pointer(Pointer::Alias(&moved), &moved.signature, &moved.signing_key_id),
            Ok(())
        );
        for forged in [
            AliasRecord {
                version: 3,
                ..moved.clone()
            },
            AliasRecord {
                sequence: 11,
                ..moved.clone()
            },
        ] {
            assert!(
                trusted
                    .verify_pointer(Pointer::Alias(&forged), &forged.signature, &forged.signing_key_id)
                    .is_err()
            );
        }

        // Keys round-trip through their PEM files.
        let key_file = dir.path().join("signing.key");
        std::fs::write(&key_file, signer.private_pem().unwrap()).unwrap();
        assert_eq!(ModelSigner::read(&key_file).unwrap().id(), signer.id());
        let empty = tempfile::tempdir().unwrap();
        assert!(TrustedKeys::load(empty.path()).is_err());
    }
}
