//! Envelope encryption for secrets at rest (cluster kubeconfigs, signing keys).
//!
//! # Scheme
//!
//! Every [`Keyring::seal`] call draws a fresh random 256-bit *data encryption
//! key* (DEK) and encrypts the plaintext with AES-256-GCM under it. The DEK is
//! then encrypted ("wrapped") with AES-256-GCM under the keyring's active *key
//! encryption key* ([`Kek`]). The result is a [`SealedSecret`]:
//!
//! * `kek_id` — id of the KEK that wrapped the DEK;
//! * `wrapped_dek` — `nonce(12) || AES-256-GCM(KEK, DEK) || tag(16)`;
//! * `ciphertext` — `nonce(12) || AES-256-GCM(DEK, plaintext) || tag(16)`.
//!
//! Both encryptions authenticate caller-supplied associated data (`aad`, e.g.
//! `b"cluster-kubeconfig:<cluster-id>"`) so a sealed value cannot be moved to
//! another record. The DEK wrapping additionally authenticates `kek_id`, so the
//! key id cannot be swapped either. The data encryption deliberately does not
//! bind `kek_id`, which is what lets [`Keyring::rewrap`] move a secret to a new
//! KEK without touching its ciphertext.
//!
//! # Key sources
//!
//! KEKs are written as `kid:BASE64KEY` where `BASE64KEY` is standard base64 of
//! exactly 32 random bytes (e.g. `openssl rand -base64 32`) and `kid` is 1–64
//! characters of `[A-Za-z0-9._-]`. The *last* listed key is the active one
//! (used for new seals); the others are only used to open / rewrap.
//!
//! * [`Keyring::from_env_value`] — `kid1:KEY1,kid2:KEY2`;
//! * [`Keyring::from_file`] — one entry per line, `#` comments and blank lines
//!   allowed, file must not be accessible by group/other (`chmod 600`);
//! * [`Keyring::load_or_generate`] — embedded default: `<dir>/kek.keys`,
//!   created with a fresh random KEK when absent;
//! * [`Keyring::generate_into`] — appends a new KEK to a key file (rotation).
//!
//! Losing every copy of a KEK makes the secrets sealed under it unrecoverable:
//! back up the key file.

use std::fmt;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{self, AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Key};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose::STANDARD};
use rand::RngCore as _;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Length in bytes of a KEK and of a DEK (AES-256).
pub const KEY_LEN: usize = 32;

/// Length in bytes of the AES-GCM nonce prefixed to `wrapped_dek` and `ciphertext`.
pub const NONCE_LEN: usize = 12;

/// Length in bytes of the AES-GCM authentication tag.
const TAG_LEN: usize = 16;

/// Name of the key file used by [`Keyring::load_or_generate`] inside its directory.
pub const DEFAULT_KEY_FILE_NAME: &str = "kek.keys";

/// Maximum length of a KEK id.
const MAX_KID_LEN: usize = 64;

/// Domain separation prefix of the AAD used when wrapping a DEK.
const WRAP_DOMAIN: &[u8] = b"kubenova/envelope/v1/dek-wrap\0";

/// Domain separation prefix of the AAD used when encrypting data under a DEK.
const DATA_DOMAIN: &[u8] = b"kubenova/envelope/v1/data\0";

/// Base64 decoder for key material: standard alphabet, padding optional.
const B64_KEY: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Errors produced by envelope encryption and key loading.
///
/// No variant ever carries key material or plaintext; messages are safe to log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A KEK id is empty, longer than 64 characters or contains characters
    /// outside `[A-Za-z0-9._-]`.
    #[error("invalid KEK id {kid:?}: must be 1-64 characters of [A-Za-z0-9._-]")]
    InvalidKid {
        /// The rejected id.
        kid: String,
    },
    /// Raw KEK bytes of the wrong length were supplied to [`Kek::new`].
    #[error("invalid KEK length: expected {KEY_LEN} bytes, got {len}")]
    InvalidKeyLength {
        /// The length that was supplied.
        len: usize,
    },
    /// One entry of an environment value or key file could not be parsed.
    #[error(
        "invalid KEK {location}{}: {reason}",
        .kid.as_deref().map(|k| format!(" (kid {k:?})")).unwrap_or_default()
    )]
    InvalidKeyEntry {
        /// Where the entry is, e.g. `entry 2` (1-based) or `line 5 of /etc/kubenova/kek.keys`.
        location: String,
        /// The entry's key id, when it could be parsed and is valid.
        kid: Option<String>,
        /// What is wrong with the entry (never includes key material).
        reason: String,
    },
    /// No KEK was configured.
    #[error("no KEKs found in {origin} (expected `kid:base64key` entries)")]
    EmptyKeyring {
        /// What was being loaded (e.g. a file path).
        origin: String,
    },
    /// Two KEKs with the same id were passed to [`Keyring::new`].
    #[error("duplicate KEK id {kid:?}")]
    DuplicateKid {
        /// The duplicated id.
        kid: String,
    },
    /// A key file is readable or writable by group/other.
    #[error(
        "key file {} has mode {mode:04o} and is accessible by group/other; \
         run `chmod 600 {}`",
        .path.display(),
        .path.display()
    )]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// An I/O error while reading or writing a key file.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The sealed secret names a KEK that is not in the keyring.
    #[error("unknown KEK id {kid:?}: the key is not in the keyring")]
    UnknownKek {
        /// The KEK id recorded in the sealed secret.
        kid: String,
    },
    /// Authentication failed: the wrapped key, ciphertext, nonce, KEK id or
    /// associated data was modified, truncated or does not belong together.
    #[error("sealed secret failed authentication (tampered, truncated, or wrong associated data)")]
    Tampered,
    /// Encryption failed (only possible for absurdly large inputs).
    #[error("encryption failed: plaintext or associated data too large")]
    Encryption,
}

impl CryptoError {
    fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    fn is_not_found(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

fn is_valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= MAX_KID_LEN
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

type KeyBytes = Zeroizing<[u8; KEY_LEN]>;

/// Allocates zeroed key storage on the heap, so moving its owner never copies key bytes.
fn new_key_box() -> Box<KeyBytes> {
    Box::new(Zeroizing::new([0u8; KEY_LEN]))
}

/// A 256-bit key-encryption key with its key id.
///
/// The key bytes live on the heap and are zeroized on drop. `Debug` prints
/// only the key id.
#[derive(Clone)]
pub struct Kek {
    kid: String,
    key: Box<KeyBytes>,
}

impl Kek {
    /// Builds a KEK from its id and 32 raw key bytes.
    ///
    /// The caller remains responsible for zeroizing its own copy of `key`.
    pub fn new(kid: impl Into<String>, key: &[u8]) -> Result<Self, CryptoError> {
        let kid = kid.into();
        if !is_valid_kid(&kid) {
            return Err(CryptoError::InvalidKid { kid });
        }
        if key.len() != KEY_LEN {
            return Err(CryptoError::InvalidKeyLength { len: key.len() });
        }
        let mut bytes = new_key_box();
        bytes.copy_from_slice(key);
        Ok(Self { kid, key: bytes })
    }

    /// Generates a fresh random KEK with an id of the form
    /// `kek-<yyyymmddhhmmss>-<4 hex>` (UTC).
    pub fn generate() -> Self {
        let mut key = new_key_box();
        OsRng.fill_bytes(&mut key[..]);
        Self {
            kid: generate_kid(),
            key,
        }
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Renders the `kid:base64` line for a key file (without newline).
    fn to_line(&self) -> Zeroizing<String> {
        let mut line = Zeroizing::new(String::with_capacity(self.kid.len() + 1 + 44));
        line.push_str(&self.kid);
        line.push(':');
        STANDARD.encode_string(&self.key[..], &mut line);
        line
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("kid", &self.kid)
            .field("key", &format_args!("<redacted>"))
            .finish()
    }
}

fn generate_kid() -> String {
    let now = time::OffsetDateTime::now_utc();
    let mut suffix = [0u8; 2];
    OsRng.fill_bytes(&mut suffix);
    format!(
        "kek-{:04}{:02}{:02}{:02}{:02}{:02}-{}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        hex::encode(suffix)
    )
}

/// A secret sealed with envelope encryption.
///
/// Serializes (with serde) as `{"kek_id": ..., "wrapped_dek": <base64>,
/// "ciphertext": <base64>}`; the byte fields use standard padded base64
/// strings in every serde format.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecret {
    /// Id of the KEK that wrapped the DEK.
    pub kek_id: String,
    /// `nonce(12) || AES-256-GCM(KEK, DEK) || tag(16)`; the AAD binds
    /// `kek_id` and the caller's associated data.
    #[serde(with = "b64_bytes")]
    pub wrapped_dek: Vec<u8>,
    /// `nonce(12) || AES-256-GCM(DEK, plaintext) || tag(16)`; the AAD binds the
    /// caller's associated data.
    #[serde(with = "b64_bytes")]
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedSecret")
            .field("kek_id", &self.kek_id)
            .field(
                "wrapped_dek",
                &format_args!("<{} bytes>", self.wrapped_dek.len()),
            )
            .field(
                "ciphertext",
                &format_args!("<{} bytes>", self.ciphertext.len()),
            )
            .finish()
    }
}

mod b64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        STANDARD
            .decode(s.as_bytes())
            .map_err(|_| serde::de::Error::custom("invalid base64 in sealed secret"))
    }
}

/// A set of KEKs, one of which (the last loaded) is active.
///
/// The active KEK wraps the DEKs of new seals; every KEK in the ring can open
/// and rewrap secrets sealed under it.
///
/// # Example
///
/// ```
/// use kubenova_store::crypto::Keyring;
///
/// // Real keys come from `openssl rand -base64 32`; these are for illustration only.
/// let old = Keyring::from_env_value("k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")?;
/// let aad = b"cluster-kubeconfig:3f1c2d9e";
/// let sealed = old.seal(b"apiVersion: v1\nkind: Config\n", aad)?;
/// assert_eq!(sealed.kek_id, "k1");
/// assert_eq!(&old.open(&sealed, aad)?[..], b"apiVersion: v1\nkind: Config\n");
///
/// // Rotation: add k2 (last = active), then rewrap existing secrets.
/// let rotated = Keyring::from_env_value(
///     "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=,\
///      k2:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
/// )?;
/// assert_eq!(rotated.active_kid(), "k2");
/// assert_eq!(rotated.kids(), ["k1", "k2"]);
/// let rewrapped = rotated.rewrap(&sealed, aad)?.expect("sealed under k1, not active");
/// assert_eq!(rewrapped.kek_id, "k2");
/// assert!(rotated.rewrap(&rewrapped, aad)?.is_none());
/// assert_eq!(&rotated.open(&rewrapped, aad)?[..], b"apiVersion: v1\nkind: Config\n");
/// # Ok::<(), kubenova_store::crypto::CryptoError>(())
/// ```
#[derive(Clone)]
pub struct Keyring {
    /// Non-active KEKs, in load order.
    older: Vec<Kek>,
    /// The active KEK (the last one loaded).
    active: Kek,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("kids", &self.kids())
            .field("active", &self.active.kid)
            .finish()
    }
}

impl Keyring {
    /// Builds a keyring from KEKs in order; the last one is active.
    ///
    /// Fails with [`CryptoError::EmptyKeyring`] on an empty list and
    /// [`CryptoError::DuplicateKid`] if two KEKs share an id.
    pub fn new(keks: Vec<Kek>) -> Result<Self, CryptoError> {
        let mut older = keks;
        let Some(active) = older.pop() else {
            return Err(CryptoError::EmptyKeyring {
                origin: "keyring".to_owned(),
            });
        };
        for (i, kek) in older.iter().enumerate() {
            if older[i + 1..]
                .iter()
                .chain(std::iter::once(&active))
                .any(|k| k.kid == kek.kid)
            {
                return Err(CryptoError::DuplicateKid {
                    kid: kek.kid.clone(),
                });
            }
        }
        Ok(Self { older, active })
    }

    /// Parses `kid1:BASE64KEY,kid2:BASE64KEY` (e.g. the value of an
    /// environment variable). The last entry is active.
    ///
    /// Whitespace around entries is ignored. Errors name the 1-based entry
    /// index and, when valid, the kid; they never contain key material.
    pub fn from_env_value(value: &str) -> Result<Self, CryptoError> {
        if value.trim().is_empty() {
            return Err(CryptoError::EmptyKeyring {
                origin: "the KEK list".to_owned(),
            });
        }
        let entries = value
            .split(',')
            .enumerate()
            .map(|(i, entry)| (format!("entry {}", i + 1), entry));
        parse_entries(entries, "the KEK list")
    }

    /// Loads a key file: one `kid:BASE64KEY` per line, `#` comments and blank
    /// lines allowed, the last entry is active.
    ///
    /// On unix the file is refused ([`CryptoError::InsecurePermissions`]) if
    /// it is accessible by group or other (`mode & 0o077 != 0`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, CryptoError> {
        let path = path.as_ref();
        let contents = read_key_file(path)?;
        parse_file_contents(path, &contents)
    }

    /// The embedded default: loads `<dir>/kek.keys`, or, if it does not
    /// exist, generates a fresh random KEK and stores it there.
    ///
    /// `dir` is created (mode 0700 on unix) if needed. The new file is written
    /// with mode 0600 to a temporary file in `dir` and then published
    /// atomically without overwriting: if another process created the key
    /// file concurrently, that file wins and is loaded instead.
    pub fn load_or_generate(dir: &Path) -> Result<Self, CryptoError> {
        let path = dir.join(DEFAULT_KEY_FILE_NAME);
        match Self::from_file(&path) {
            Ok(keyring) => return Ok(keyring),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }

        create_private_dir(dir)
            .map_err(|e| CryptoError::io(format!("creating key directory {}", dir.display()), e))?;
        let kek = Kek::generate();
        let mut contents = Zeroizing::new(String::from(FILE_HEADER));
        contents.push_str(&kek.to_line());
        contents.push('\n');

        let created = publish_new_file(dir, &path, contents.as_bytes())
            .map_err(|e| CryptoError::io(format!("writing key file {}", path.display()), e))?;
        if !created {
            // Lost a creation race: use the keys that were published first.
            return Self::from_file(&path);
        }
        tracing::info!(
            kid = %kek.kid,
            path = %path.display(),
            "generated a new key-encryption key; back up this file, secrets cannot be recovered without it"
        );
        Ok(Self {
            older: Vec::new(),
            active: kek,
        })
    }

    /// Rotation: appends a freshly generated KEK to the existing key file at
    /// `path` (its mode, normally 0600, is unchanged) and returns the keyring
    /// re-read from the file, in which the new KEK is active.
    ///
    /// Existing secrets keep opening; use [`Keyring::rewrap`] to move them to
    /// the new KEK. Processes that already loaded the file keep using their
    /// previous active KEK until they reload it.
    pub fn generate_into(path: impl AsRef<Path>) -> Result<Self, CryptoError> {
        let path = path.as_ref();
        let contents = read_key_file(path)?;
        let existing = parse_file_contents(path, &contents)?;

        let mut kek = Kek::generate();
        while existing.get(&kek.kid).is_some() {
            kek = Kek::generate();
        }
        let mut addition = Zeroizing::new(String::new());
        if !contents.is_empty() && !contents.ends_with('\n') {
            addition.push('\n');
        }
        addition.push_str(&kek.to_line());
        addition.push('\n');

        let write_err = |e| CryptoError::io(format!("appending to key file {}", path.display()), e);
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(write_err)?;
        file.write_all(addition.as_bytes()).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        drop(file);

        let keyring = Self::from_file(path)?;
        if keyring.active.kid != kek.kid {
            tracing::warn!(
                kid = %kek.kid,
                active = %keyring.active.kid,
                path = %path.display(),
                "key file was modified concurrently; the newly generated KEK is not the active one"
            );
        } else {
            tracing::info!(kid = %kek.kid, path = %path.display(), "appended a new active KEK");
        }
        Ok(keyring)
    }

    /// Id of the active KEK (used to wrap the DEKs of new seals).
    pub fn active_kid(&self) -> &str {
        &self.active.kid
    }

    /// Ids of all KEKs, in load order (the active one last).
    pub fn kids(&self) -> Vec<&str> {
        self.older
            .iter()
            .chain(std::iter::once(&self.active))
            .map(|k| k.kid.as_str())
            .collect()
    }

    fn get(&self, kid: &str) -> Option<&Kek> {
        if self.active.kid == kid {
            return Some(&self.active);
        }
        self.older.iter().find(|k| k.kid == kid)
    }

    fn get_for(&self, sealed: &SealedSecret) -> Result<&Kek, CryptoError> {
        self.get(&sealed.kek_id)
            .ok_or_else(|| CryptoError::UnknownKek {
                kid: sealed.kek_id.clone(),
            })
    }

    /// Seals `plaintext` under a fresh random DEK wrapped by the active KEK.
    ///
    /// `aad` must be passed unchanged to [`Keyring::open`]; use something
    /// that identifies the record, e.g. `b"cluster-kubeconfig:<cluster-id>"`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<SealedSecret, CryptoError> {
        let mut dek = new_key_box();
        OsRng.fill_bytes(&mut dek[..]);
        let ciphertext = aead_seal(&dek, plaintext, &data_aad(aad))?;
        let wrapped_dek = wrap_dek(&self.active, &dek, aad)?;
        Ok(SealedSecret {
            kek_id: self.active.kid.clone(),
            wrapped_dek,
            ciphertext,
        })
    }

    /// Opens a sealed secret; the plaintext is zeroized when dropped.
    ///
    /// Fails with [`CryptoError::UnknownKek`] if `sealed.kek_id` is not in the
    /// keyring and [`CryptoError::Tampered`] if anything (wrapped key,
    /// ciphertext, nonces, `kek_id`, `aad`) does not authenticate.
    pub fn open(
        &self,
        sealed: &SealedSecret,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let kek = self.get_for(sealed)?;
        let dek = unwrap_dek(kek, sealed, aad)?;
        aead_open(&dek, &sealed.ciphertext, &data_aad(aad))
    }

    /// Re-wraps the DEK of `sealed` under the active KEK, leaving the
    /// ciphertext unchanged. Returns `None` when `sealed` already uses the
    /// active KEK (nothing is verified in that case).
    ///
    /// The wrapped DEK is authenticated (same errors as [`Keyring::open`]);
    /// the data ciphertext is copied as is and only checked on open.
    pub fn rewrap(
        &self,
        sealed: &SealedSecret,
        aad: &[u8],
    ) -> Result<Option<SealedSecret>, CryptoError> {
        if sealed.kek_id == self.active.kid {
            return Ok(None);
        }
        let old = self.get_for(sealed)?;
        let dek = unwrap_dek(old, sealed, aad)?;
        let wrapped_dek = wrap_dek(&self.active, &dek, aad)?;
        Ok(Some(SealedSecret {
            kek_id: self.active.kid.clone(),
            wrapped_dek,
            ciphertext: sealed.ciphertext.clone(),
        }))
    }
}

const FILE_HEADER: &str = "\
# KubeNova key-encryption keys: one `kid:base64(32-byte key)` per line.
# The LAST entry is the active key. Keep this file mode 0600 and back it up:
# secrets sealed under a key cannot be recovered without it.
";

fn parse_entries<'a>(
    entries: impl Iterator<Item = (String, &'a str)>,
    origin: &str,
) -> Result<Keyring, CryptoError> {
    let mut keks: Vec<(String, Kek)> = Vec::new();
    for (location, entry) in entries {
        let kek = parse_entry(&location, entry)?;
        if let Some((first, _)) = keks.iter().find(|(_, k)| k.kid == kek.kid) {
            return Err(CryptoError::InvalidKeyEntry {
                reason: format!("duplicate kid (already defined at {first})"),
                kid: Some(kek.kid.clone()),
                location,
            });
        }
        keks.push((location, kek));
    }
    if keks.is_empty() {
        return Err(CryptoError::EmptyKeyring {
            origin: origin.to_owned(),
        });
    }
    Keyring::new(keks.into_iter().map(|(_, k)| k).collect())
}

fn parse_entry(location: &str, entry: &str) -> Result<Kek, CryptoError> {
    let err = |kid: Option<&str>, reason: String| CryptoError::InvalidKeyEntry {
        location: location.to_owned(),
        kid: kid.map(str::to_owned),
        reason,
    };
    let entry = entry.trim();
    if entry.is_empty() {
        return Err(err(None, "entry is empty".to_owned()));
    }
    let Some((kid, key_b64)) = entry.split_once(':') else {
        return Err(err(None, "expected `kid:base64key`".to_owned()));
    };
    let (kid, key_b64) = (kid.trim(), key_b64.trim());
    if !is_valid_kid(kid) {
        // The rejected text is not echoed: it could be a misplaced key.
        return Err(err(
            None,
            format!(
                "invalid kid ({} characters): must be 1-{MAX_KID_LEN} characters of [A-Za-z0-9._-]",
                kid.chars().count()
            ),
        ));
    }
    if key_b64.is_empty() {
        return Err(err(Some(kid), "key is empty".to_owned()));
    }
    let mut decoded = Zeroizing::new(Vec::with_capacity(key_b64.len().div_ceil(4) * 3));
    if B64_KEY.decode_vec(key_b64, &mut decoded).is_err() {
        return Err(err(Some(kid), "key is not valid base64".to_owned()));
    }
    if decoded.len() != KEY_LEN {
        return Err(err(
            Some(kid),
            format!(
                "key must decode to {KEY_LEN} bytes, got {} bytes",
                decoded.len()
            ),
        ));
    }
    Kek::new(kid, &decoded)
}

fn parse_file_contents(path: &Path, contents: &str) -> Result<Keyring, CryptoError> {
    let entries = contents
        .lines()
        .enumerate()
        .filter(|(_, line)| {
            let line = line.trim();
            !line.is_empty() && !line.starts_with('#')
        })
        .map(|(i, line)| (format!("line {} of {}", i + 1, path.display()), line));
    parse_entries(entries, &format!("key file {}", path.display()))
}

/// Reads a key file after checking (on unix) that it is private to its owner.
fn read_key_file(path: &Path) -> Result<Zeroizing<String>, CryptoError> {
    let read_err = |e| CryptoError::io(format!("reading key file {}", path.display()), e);
    let mut file = fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    check_private(path, &meta)?;
    let capacity = usize::try_from(meta.len()).unwrap_or(0).saturating_add(1);
    let mut contents = Zeroizing::new(String::with_capacity(capacity));
    file.read_to_string(&mut contents).map_err(read_err)?;
    Ok(contents)
}

#[cfg(unix)]
fn check_private(path: &Path, meta: &fs::Metadata) -> Result<(), CryptoError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CryptoError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _meta: &fs::Metadata) -> Result<(), CryptoError> {
    Ok(())
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)
}

/// Creates `path` (which must not exist yet) with mode 0600.
fn create_private_file(path: &Path) -> io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        options.mode(0o600);
        let file = options.open(path)?;
        // Independent of the umask.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        Ok(file)
    }
    #[cfg(not(unix))]
    {
        options.open(path)
    }
}

/// Writes `bytes` to a private temporary file in `dir`, then publishes it at
/// `path` without overwriting an existing file. Returns `false` if `path`
/// already existed (the temporary file is discarded).
fn publish_new_file(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<bool> {
    let mut suffix = [0u8; 8];
    OsRng.fill_bytes(&mut suffix);
    let tmp = dir.join(format!(
        ".{DEFAULT_KEY_FILE_NAME}.tmp-{}",
        hex::encode(suffix)
    ));

    let result = (|| {
        let mut file = create_private_file(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        // A hard link publishes atomically and, unlike rename, never clobbers
        // a key file another process created in the meantime.
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(_) => {
                // File system without hard links: fall back to rename.
                if fs::symlink_metadata(path).is_ok() {
                    Ok(false)
                } else {
                    fs::rename(&tmp, path).map(|()| true)
                }
            }
        }
    })();
    // Gone already after a rename; any other failure leaves nothing to do.
    let _ = fs::remove_file(&tmp);
    if result.is_ok() {
        sync_dir(dir);
    }
    result
}

#[cfg(unix)]
fn sync_dir(dir: &Path) {
    // Best effort durability of the new directory entry.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) {}

/// AAD for wrapping a DEK: domain || len(kid) || kid || caller aad.
fn wrap_aad(kid: &str, aad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(WRAP_DOMAIN.len() + 4 + kid.len() + aad.len());
    out.extend_from_slice(WRAP_DOMAIN);
    // kid is at most 64 bytes when it comes from a Kek; longer ids from a
    // sealed secret never match a Kek anyway.
    out.extend_from_slice(&u32::try_from(kid.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(kid.as_bytes());
    out.extend_from_slice(aad);
    out
}

/// AAD for encrypting data under a DEK: domain || caller aad.
fn data_aad(aad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(DATA_DOMAIN.len() + aad.len());
    out.extend_from_slice(DATA_DOMAIN);
    out.extend_from_slice(aad);
    out
}

fn wrap_dek(kek: &Kek, dek: &KeyBytes, aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    aead_seal(&kek.key, &dek[..], &wrap_aad(&kek.kid, aad))
}

fn unwrap_dek(kek: &Kek, sealed: &SealedSecret, aad: &[u8]) -> Result<Box<KeyBytes>, CryptoError> {
    let raw = aead_open(
        &kek.key,
        &sealed.wrapped_dek,
        &wrap_aad(&sealed.kek_id, aad),
    )?;
    if raw.len() != KEY_LEN {
        return Err(CryptoError::Tampered);
    }
    let mut dek = new_key_box();
    dek.copy_from_slice(&raw);
    Ok(dek)
}

/// `nonce || AES-256-GCM(key, msg, aad) || tag` with a fresh random nonce.
fn aead_seal(key: &KeyBytes, msg: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key[..]));
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    // Zeroizing: if encryption fails the buffer still holds plaintext.
    let mut out = Zeroizing::new(Vec::with_capacity(NONCE_LEN + msg.len() + TAG_LEN));
    out.extend_from_slice(&nonce);
    out.extend_from_slice(msg);
    let tag = cipher
        .encrypt_in_place_detached(
            aead::Nonce::<Aes256Gcm>::from_slice(&nonce),
            aad,
            &mut out[NONCE_LEN..],
        )
        .map_err(|_| CryptoError::Encryption)?;
    out.extend_from_slice(&tag);
    Ok(std::mem::take(&mut *out))
}

/// Inverse of [`aead_seal`]; any failure is [`CryptoError::Tampered`].
fn aead_open(key: &KeyBytes, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Tampered);
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key[..]));
    let mut out = Zeroizing::new(body.to_vec());
    cipher
        .decrypt_in_place_detached(
            aead::Nonce::<Aes256Gcm>::from_slice(nonce),
            aad,
            &mut out[..],
            aead::Tag::<Aes256Gcm>::from_slice(tag),
        )
        .map_err(|_| CryptoError::Tampered)?;
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const AAD: &[u8] = b"cluster-kubeconfig:6b1f0c1e-0000-4000-8000-000000000001";

    fn key_b64(byte: u8) -> String {
        STANDARD.encode([byte; KEY_LEN])
    }

    fn ring(spec: &[(&str, u8)]) -> Keyring {
        let value = spec
            .iter()
            .map(|(kid, b)| format!("{kid}:{}", key_b64(*b)))
            .collect::<Vec<_>>()
            .join(",");
        Keyring::from_env_value(&value).unwrap()
    }

    fn assert_tampered(res: Result<Zeroizing<Vec<u8>>, CryptoError>, what: &str) {
        match res {
            Err(CryptoError::Tampered) => {}
            Err(other) => panic!("{what}: expected Tampered, got {other:?}"),
            Ok(_) => panic!("{what}: tampered secret opened"),
        }
    }

    #[cfg(unix)]
    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[cfg(unix)]
    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn write_private(path: &Path, contents: &str) {
        fs::write(path, contents).unwrap();
        #[cfg(unix)]
        chmod(path, 0o600);
    }

    #[test]
    fn round_trip() {
        let kr = ring(&[("k1", 1)]);
        for plaintext in [&b""[..], b"x", &[7u8; 10_000][..]] {
            let sealed = kr.seal(plaintext, AAD).unwrap();
            assert_eq!(sealed.kek_id, "k1");
            assert_eq!(sealed.wrapped_dek.len(), NONCE_LEN + KEY_LEN + TAG_LEN);
            assert_eq!(
                sealed.ciphertext.len(),
                NONCE_LEN + plaintext.len() + TAG_LEN
            );
            assert_eq!(&kr.open(&sealed, AAD).unwrap()[..], plaintext);
        }
        // Empty AAD is allowed too.
        let sealed = kr.seal(b"secret", b"").unwrap();
        assert_eq!(&kr.open(&sealed, b"").unwrap()[..], b"secret");
    }

    #[test]
    fn fresh_dek_and_nonces_per_seal() {
        let kr = ring(&[("k1", 1)]);
        let a = kr.seal(b"same plaintext", AAD).unwrap();
        let b = kr.seal(b"same plaintext", AAD).unwrap();
        assert_ne!(a.wrapped_dek, b.wrapped_dek);
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_ne!(a.wrapped_dek[..NONCE_LEN], b.wrapped_dek[..NONCE_LEN]);
        assert_ne!(a.ciphertext[..NONCE_LEN], b.ciphertext[..NONCE_LEN]);
        // Different DEKs: one secret's wrapped key does not open the other's data.
        let mixed = SealedSecret {
            wrapped_dek: a.wrapped_dek.clone(),
            ..b.clone()
        };
        assert_tampered(kr.open(&mixed, AAD), "swapped wrapped_dek");
    }

    #[test]
    fn tampering_any_part_is_detected() {
        let kr = ring(&[("k1", 1), ("k2", 2)]);
        let sealed = kr.seal(b"top secret kubeconfig", AAD).unwrap();
        assert_eq!(
            &kr.open(&sealed, AAD).unwrap()[..],
            b"top secret kubeconfig"
        );

        for field in ["wrapped_dek", "ciphertext"] {
            let len = match field {
                "wrapped_dek" => sealed.wrapped_dek.len(),
                _ => sealed.ciphertext.len(),
            };
            // Nonce, encrypted body and tag bytes.
            for pos in [
                0,
                NONCE_LEN - 1,
                NONCE_LEN,
                NONCE_LEN + 1,
                len - TAG_LEN,
                len - 1,
            ] {
                let mut t = sealed.clone();
                let bytes = match field {
                    "wrapped_dek" => &mut t.wrapped_dek,
                    _ => &mut t.ciphertext,
                };
                bytes[pos] ^= 0x01;
                assert_tampered(kr.open(&t, AAD), &format!("{field}[{pos}] flipped"));
            }
            for new_len in [0, NONCE_LEN, NONCE_LEN + TAG_LEN - 1, len - 1] {
                let mut t = sealed.clone();
                match field {
                    "wrapped_dek" => t.wrapped_dek.truncate(new_len),
                    _ => t.ciphertext.truncate(new_len),
                }
                assert_tampered(kr.open(&t, AAD), &format!("{field} truncated to {new_len}"));
            }
            let mut t = sealed.clone();
            match field {
                "wrapped_dek" => t.wrapped_dek.push(0),
                _ => t.ciphertext.push(0),
            }
            assert_tampered(kr.open(&t, AAD), &format!("{field} extended"));
        }

        // kek_id changed to another KEK that is in the ring.
        let mut t = sealed.clone();
        t.kek_id = "k1".to_owned();
        assert_eq!(sealed.kek_id, "k2");
        assert_tampered(kr.open(&t, AAD), "kek_id swapped");
        assert!(matches!(kr.rewrap(&t, AAD), Err(CryptoError::Tampered)));
    }

    #[test]
    fn wrong_aad_is_tampered() {
        let kr = ring(&[("k1", 1)]);
        let sealed = kr.seal(b"kubeconfig", b"cluster-kubeconfig:a").unwrap();
        assert_tampered(kr.open(&sealed, b"cluster-kubeconfig:b"), "other record");
        assert_tampered(kr.open(&sealed, b""), "empty aad");
        assert_tampered(kr.open(&sealed, b"cluster-kubeconfig:a\0"), "aad suffix");
        assert!(matches!(
            kr.rewrap(&sealed, b"cluster-kubeconfig:b"),
            Ok(None) // already active: nothing to do, nothing checked
        ));
        assert!(matches!(
            ring(&[("k1", 1), ("k2", 2)]).rewrap(&sealed, b"cluster-kubeconfig:b"),
            Err(CryptoError::Tampered)
        ));
    }

    #[test]
    fn unknown_kid() {
        let sealed = ring(&[("k1", 1)]).seal(b"data", AAD).unwrap();
        let other = ring(&[("k2", 2)]);
        match other.open(&sealed, AAD) {
            Err(CryptoError::UnknownKek { kid }) => assert_eq!(kid, "k1"),
            other => panic!("expected UnknownKek, got {:?}", other.map(|_| ())),
        }
        assert!(matches!(
            other.rewrap(&sealed, AAD),
            Err(CryptoError::UnknownKek { kid }) if kid == "k1"
        ));
        // Same key bytes under another id are still a different KEK.
        let renamed = ring(&[("k9", 1)]);
        assert!(matches!(
            renamed.open(&sealed, AAD),
            Err(CryptoError::UnknownKek { .. })
        ));
        let mut relabeled = sealed.clone();
        relabeled.kek_id = "k9".to_owned();
        assert_tampered(renamed.open(&relabeled, AAD), "relabeled kek_id");
    }

    #[test]
    fn rotation_and_rewrap() {
        let k1 = ring(&[("k1", 1)]);
        let sealed = k1.seal(b"kubeconfig v1", AAD).unwrap();

        let both = ring(&[("k1", 1), ("k2", 2)]);
        assert_eq!(both.active_kid(), "k2");
        assert_eq!(both.kids(), ["k1", "k2"]);
        // Old secrets still open before rewrap.
        assert_eq!(&both.open(&sealed, AAD).unwrap()[..], b"kubeconfig v1");

        let rewrapped = both.rewrap(&sealed, AAD).unwrap().unwrap();
        assert_eq!(rewrapped.kek_id, "k2");
        assert_eq!(rewrapped.ciphertext, sealed.ciphertext);
        assert_ne!(rewrapped.wrapped_dek, sealed.wrapped_dek);
        assert!(both.rewrap(&rewrapped, AAD).unwrap().is_none());

        let k2_only = ring(&[("k2", 2)]);
        assert_eq!(
            &k2_only.open(&rewrapped, AAD).unwrap()[..],
            b"kubeconfig v1"
        );
        assert_tampered(k2_only.open(&rewrapped, b"other"), "rewrapped, wrong aad");
        assert!(matches!(
            k1.open(&rewrapped, AAD),
            Err(CryptoError::UnknownKek { kid }) if kid == "k2"
        ));
        // New seals use the active KEK.
        assert_eq!(both.seal(b"x", AAD).unwrap().kek_id, "k2");
    }

    #[test]
    fn env_value_parsing() {
        let kr = Keyring::from_env_value(&format!(
            " old.key_1:{} , new-key:{}",
            key_b64(1),
            key_b64(2).trim_end_matches('=')
        ))
        .unwrap();
        assert_eq!(kr.kids(), ["old.key_1", "new-key"]);
        assert_eq!(kr.active_kid(), "new-key");
    }

    #[test]
    fn env_value_errors() {
        let good = key_b64(1);
        let msg = |v: &str| Keyring::from_env_value(v).unwrap_err().to_string();

        for empty in ["", "   "] {
            let e = Keyring::from_env_value(empty).unwrap_err();
            assert!(matches!(e, CryptoError::EmptyKeyring { .. }), "{e:?}");
            assert!(e.to_string().contains("no KEKs"), "{e}");
        }

        // Bad base64: names entry index and kid, never the key text.
        let bad_key = format!("{}*$", &good[..40]);
        let m = msg(&format!("k1:{good},k2:{bad_key}"));
        assert!(m.contains("entry 2") && m.contains("\"k2\""), "{m}");
        assert!(m.contains("not valid base64"), "{m}");
        assert!(!m.contains(&bad_key) && !m.contains(&good[..40]), "{m}");

        // Wrong length.
        let short = STANDARD.encode([3u8; 16]);
        let m = msg(&format!("k1:{short}"));
        assert!(m.contains("entry 1") && m.contains("\"k1\""), "{m}");
        assert!(m.contains("32 bytes, got 16 bytes"), "{m}");
        assert!(!m.contains(&short), "{m}");

        // Duplicate kid.
        let m = msg(&format!("k1:{good},k2:{},k1:{}", key_b64(2), key_b64(3)));
        assert!(m.contains("entry 3") && m.contains("\"k1\""), "{m}");
        assert!(m.contains("duplicate kid") && m.contains("entry 1"), "{m}");
        assert!(!m.contains(&good), "{m}");

        // Empty entry, missing separator, empty key, invalid kid.
        let m = msg(&format!("k1:{good},"));
        assert!(m.contains("entry 2") && m.contains("empty"), "{m}");
        let m = msg(&good);
        assert!(m.contains("entry 1") && m.contains("kid:base64key"), "{m}");
        assert!(!m.contains(&good), "{m}");
        let m = msg("k1:");
        assert!(m.contains("\"k1\"") && m.contains("key is empty"), "{m}");
        let m = msg(&format!("bad kid!:{good}"));
        assert!(m.contains("entry 1") && m.contains("invalid kid"), "{m}");
        let m = msg(&format!("{}:{good}", "a".repeat(65)));
        assert!(m.contains("invalid kid (65 characters)"), "{m}");
        // Key and kid swapped: the key must not be echoed as a "kid".
        let m = msg(&format!("{good}:k1"));
        assert!(m.contains("invalid kid") && !m.contains(&good), "{m}");
    }

    #[test]
    fn kek_new_validation() {
        assert!(Kek::new("a".repeat(64), &[0u8; KEY_LEN]).is_ok());
        assert!(Kek::new("A-z_0.9", &[0u8; KEY_LEN]).is_ok());
        for kid in [
            String::new(),
            "a".repeat(65),
            "a b".into(),
            "a:b".into(),
            "é".into(),
        ] {
            assert!(
                matches!(
                    Kek::new(kid.clone(), &[0u8; KEY_LEN]),
                    Err(CryptoError::InvalidKid { .. })
                ),
                "{kid:?}"
            );
        }
        assert!(matches!(
            Kek::new("k", &[0u8; 31]),
            Err(CryptoError::InvalidKeyLength { len: 31 })
        ));
        assert!(matches!(
            Keyring::new(vec![]),
            Err(CryptoError::EmptyKeyring { .. })
        ));
        let dup = Keyring::new(vec![
            Kek::new("a", &[1; KEY_LEN]).unwrap(),
            Kek::new("b", &[2; KEY_LEN]).unwrap(),
            Kek::new("a", &[3; KEY_LEN]).unwrap(),
        ]);
        assert!(matches!(dup, Err(CryptoError::DuplicateKid { kid }) if kid == "a"));
        let kr = Keyring::new(vec![Kek::generate(), Kek::generate()]).unwrap();
        assert_eq!(kr.kids().len(), 2);
    }

    #[test]
    fn generated_kid_format() {
        let kid = Kek::generate().kid().to_owned();
        // kek-yyyymmddhhmmss-xxxx
        assert_eq!(kid.len(), 4 + 14 + 1 + 4, "{kid}");
        assert!(kid.starts_with("kek-"), "{kid}");
        assert!(kid[4..18].bytes().all(|b| b.is_ascii_digit()), "{kid}");
        assert_eq!(&kid[18..19], "-");
        assert!(kid[19..].bytes().all(|b| b.is_ascii_hexdigit()), "{kid}");
        assert!(is_valid_kid(&kid));
    }

    #[test]
    fn debug_never_shows_key_material() {
        let key: Vec<u8> = (0..KEY_LEN as u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(11))
            .collect();
        let kek = Kek::new("k1", &key).unwrap();
        let kr = Keyring::new(vec![kek.clone()]).unwrap();
        for dbg in [
            format!("{kek:?}"),
            format!("{kek:#?}"),
            format!("{kr:?}"),
            format!("{kr:#?}"),
        ] {
            assert!(dbg.contains("k1"), "{dbg}");
            assert!(!dbg.contains(&hex::encode(&key)), "{dbg}");
            assert!(!dbg.contains(&STANDARD.encode(&key)), "{dbg}");
            assert!(!dbg.contains(&format!("{key:?}")[1..20]), "{dbg}");
            assert!(!dbg.contains(&format!("{}, {}", key[0], key[1])), "{dbg}");
        }
        assert!(format!("{kek:?}").contains("<redacted>"));
        let sealed = kr.seal(b"plaintext", AAD).unwrap();
        let dbg = format!("{sealed:?}");
        assert!(dbg.contains("k1") && dbg.contains("bytes>"), "{dbg}");
    }

    #[test]
    fn sealed_secret_serde_round_trip() {
        let kr = ring(&[("k1", 1)]);
        let sealed = kr.seal(b"payload", AAD).unwrap();
        let json = serde_json::to_string(&sealed).unwrap();
        assert!(
            json.contains(&STANDARD.encode(&sealed.ciphertext)),
            "{json}"
        );
        let back: SealedSecret = serde_json::from_str(&json).unwrap();
        assert_eq!(back, sealed);
        assert_eq!(&kr.open(&back, AAD).unwrap()[..], b"payload");
        assert!(
            serde_json::from_str::<SealedSecret>(
                r#"{"kek_id":"k1","wrapped_dek":"!!","ciphertext":""}"#
            )
            .is_err()
        );
    }

    #[test]
    fn from_file_with_comments_and_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        write_private(
            &path,
            &format!(
                "# header\n\n  k1:{}  \n   # indented comment\nk2:{}\r\n\n",
                key_b64(1),
                key_b64(2)
            ),
        );
        let kr = Keyring::from_file(&path).unwrap();
        assert_eq!(kr.kids(), ["k1", "k2"]);
        assert_eq!(kr.active_kid(), "k2");
        let sealed = kr.seal(b"x", AAD).unwrap();
        assert_eq!(&ring(&[("k2", 2)]).open(&sealed, AAD).unwrap()[..], b"x");

        // Errors name the line and file.
        write_private(&path, &format!("# c\nk1:{}\nk2:{}\n", key_b64(1), "AAAA"));
        let m = Keyring::from_file(&path).unwrap_err().to_string();
        assert!(m.contains("line 3 of") && m.contains("\"k2\""), "{m}");
        assert!(m.contains("got 3 bytes"), "{m}");

        write_private(&path, "# only comments\n\n");
        let e = Keyring::from_file(&path).unwrap_err();
        assert!(matches!(e, CryptoError::EmptyKeyring { .. }), "{e:?}");

        let e = Keyring::from_file(dir.path().join("missing")).unwrap_err();
        assert!(e.is_not_found(), "{e:?}");
        assert!(e.to_string().contains("reading key file"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn refuses_group_or_world_accessible_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        write_private(&path, &format!("k1:{}\n", key_b64(1)));
        assert!(Keyring::from_file(&path).is_ok());
        chmod(&path, 0o400);
        assert!(Keyring::from_file(&path).is_ok());

        for mode in [0o644, 0o640, 0o604, 0o660] {
            chmod(&path, mode);
            let e = Keyring::from_file(&path).unwrap_err();
            assert!(
                matches!(&e, CryptoError::InsecurePermissions { mode: m, .. } if *m == mode),
                "{e:?}"
            );
            let m = e.to_string();
            assert!(
                m.contains("chmod 600") && m.contains(&format!("{mode:04o}")),
                "{m}"
            );
            assert!(!m.contains(&key_b64(1)), "{m}");
        }

        // load_or_generate must refuse too, and never overwrite the file.
        let kek_path = dir.path().join(DEFAULT_KEY_FILE_NAME);
        write_private(&kek_path, &format!("k1:{}\n", key_b64(1)));
        chmod(&kek_path, 0o644);
        let e = Keyring::load_or_generate(dir.path()).unwrap_err();
        assert!(
            matches!(e, CryptoError::InsecurePermissions { .. }),
            "{e:?}"
        );
        assert!(Keyring::generate_into(&kek_path).is_err());
        chmod(&kek_path, 0o600);
        assert_eq!(
            Keyring::load_or_generate(dir.path()).unwrap().kids(),
            ["k1"]
        );
    }

    #[test]
    fn load_or_generate_creates_private_file_once() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("nested").join("state");
        let first = Keyring::load_or_generate(&dir).unwrap();
        let path = dir.join(DEFAULT_KEY_FILE_NAME);
        assert!(path.is_file());
        assert_eq!(first.kids().len(), 1);
        assert!(first.active_kid().starts_with("kek-"));
        #[cfg(unix)]
        {
            assert_eq!(mode_of(&path), 0o600);
            assert_eq!(mode_of(&dir), 0o700);
        }
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [DEFAULT_KEY_FILE_NAME]);

        let sealed = first.seal(b"kubeconfig", AAD).unwrap();
        let second = Keyring::load_or_generate(&dir).unwrap();
        assert_eq!(second.kids(), first.kids());
        assert_eq!(&second.open(&sealed, AAD).unwrap()[..], b"kubeconfig");
        let contents = fs::read_to_string(&path).unwrap();
        assert!(contents.starts_with('#'), "{contents}");
    }

    #[cfg(unix)]
    #[test]
    fn load_or_generate_does_not_clobber_a_published_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DEFAULT_KEY_FILE_NAME);
        write_private(&path, &format!("winner:{}\n", key_b64(5)));
        assert!(!publish_new_file(dir.path(), &path, b"loser:xxx\n").unwrap());
        assert_eq!(Keyring::from_file(&path).unwrap().kids(), ["winner"]);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn generate_into_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let first = Keyring::load_or_generate(dir.path()).unwrap();
        let path = dir.path().join(DEFAULT_KEY_FILE_NAME);
        let sealed = first.seal(b"v1", AAD).unwrap();

        let rotated = Keyring::generate_into(&path).unwrap();
        assert_eq!(rotated.kids().len(), 2);
        assert_eq!(rotated.kids()[0], first.active_kid());
        assert_ne!(rotated.active_kid(), first.active_kid());
        #[cfg(unix)]
        assert_eq!(mode_of(&path), 0o600);

        let rewrapped = rotated.rewrap(&sealed, AAD).unwrap().unwrap();
        assert_eq!(rewrapped.kek_id, rotated.active_kid());
        assert_eq!(&rotated.open(&rewrapped, AAD).unwrap()[..], b"v1");

        // Reloading gives the same ring; rotating again adds a third key.
        let reloaded = Keyring::load_or_generate(dir.path()).unwrap();
        assert_eq!(reloaded.kids(), rotated.kids());
        let third = Keyring::generate_into(&path).unwrap();
        assert_eq!(third.kids().len(), 3);
        assert_eq!(&third.open(&sealed, AAD).unwrap()[..], b"v1");

        // A hand-written file without a trailing newline.
        let manual = dir.path().join("manual.keys");
        write_private(&manual, &format!("# keys\nk1:{}", key_b64(1)));
        let kr = Keyring::generate_into(&manual).unwrap();
        assert_eq!(kr.kids()[0], "k1");
        assert_eq!(kr.kids().len(), 2);

        // The file must already exist.
        let e = Keyring::generate_into(dir.path().join("absent.keys")).unwrap_err();
        assert!(e.is_not_found(), "{e:?}");
    }
}
