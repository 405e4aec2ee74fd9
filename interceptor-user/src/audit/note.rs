//! Signed notes (C2SP `signed-note`) with Ed25519 keys, and the checkpoint text they carry
//! (C2SP `tlog-checkpoint`).
//!
//! A note is UTF-8 text ending in a newline, a blank line, then one signature line per key:
//! `— <key name> <base64(key hash (4 bytes) || signature (64 bytes))>`. The key hash is the first
//! four bytes of SHA-256(key name || "\n" || 0x01 || public key). Keys are written the way the
//! reference implementation (`golang.org/x/mod/sumdb/note`) writes them:
//! `PRIVATE+KEY+<name>+<hash hex>+<base64(0x01 || seed)>` for the signing key (kept apart from
//! the database, mode 0600) and `<name>+<hash hex>+<base64(0x01 || public key)>` for the
//! verifier key handed to auditors.
//!
//! A checkpoint's text is: origin line, tree size (decimal), base64 root hash, then extension
//! lines (here: the time and the kernel's per-service connection counters).
use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use sha2::{Digest, Sha256};

const ALG_ED25519: u8 = 0x01;

#[derive(Debug, thiserror::Error)]
pub enum NoteError {
    #[error("malformed key: {0}")]
    Key(String),
    #[error("malformed note: {0}")]
    Malformed(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn key_hash(name: &str, public: &[u8]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([ALG_ED25519]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['+', ' ', '\n', '\t']) && name.is_ascii()
}

/// An Ed25519 signing key with its note name.
pub struct Signer {
    name: String,
    seed: [u8; 32],
    pair: Ed25519KeyPair,
    hash: [u8; 4],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.name)
    }
}

impl Signer {
    pub fn generate(name: &str) -> Result<Signer, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::Key(format!(
                "key name {name:?} must be non-empty ASCII without '+' or spaces"
            )));
        }
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| NoteError::Key("no randomness".into()))?;
        Signer::from_seed(name, seed)
    }

    fn from_seed(name: &str, seed: [u8; 32]) -> Result<Signer, NoteError> {
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|e| NoteError::Key(format!("ed25519 seed: {e}")))?;
        let hash = key_hash(name, pair.public_key().as_ref());
        Ok(Signer {
            name: name.to_string(),
            seed,
            pair,
            hash,
        })
    }

    /// Parses `PRIVATE+KEY+<name>+<hash>+<base64>`.
    pub fn parse(text: &str) -> Result<Signer, NoteError> {
        let t = text.trim();
        let rest = t
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| NoteError::Key("does not start with PRIVATE+KEY+".into()))?;
        let parts: Vec<&str> = rest.splitn(3, '+').collect();
        let [name, hash, key] = parts[..] else {
            return Err(NoteError::Key("expected PRIVATE+KEY+name+hash+key".into()));
        };
        let raw = B64
            .decode(key)
            .map_err(|e| NoteError::Key(format!("base64: {e}")))?;
        if raw.len() != 33 || raw[0] != ALG_ED25519 {
            return Err(NoteError::Key("not an Ed25519 key".into()));
        }
        let s = Signer::from_seed(name, raw[1..].try_into().unwrap_or([0; 32]))?;
        if hex::encode(s.hash) != hash {
            return Err(NoteError::Key("key hash does not match the key".into()));
        }
        Ok(s)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn private_text(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(&self.seed);
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex::encode(self.hash),
            B64.encode(raw)
        )
    }

    pub fn verifier(&self) -> Verifier {
        Verifier {
            name: self.name.clone(),
            public: self
                .pair
                .public_key()
                .as_ref()
                .try_into()
                .unwrap_or([0; 32]),
            hash: self.hash,
        }
    }

    /// Signs `text` (which must end in a newline) and returns the whole note.
    pub fn sign(&self, text: &str) -> String {
        debug_assert!(text.ends_with('\n'));
        let sig = self.pair.sign(text.as_bytes());
        let mut raw = self.hash.to_vec();
        raw.extend_from_slice(sig.as_ref());
        format!("{text}\n\u{2014} {} {}\n", self.name, B64.encode(raw))
    }

    /// Reads the key file, or creates it (mode 0600, parent directories 0700) with a new key.
    pub fn load_or_create(path: &Path, name: &str) -> Result<Signer, NoteError> {
        match std::fs::read_to_string(path) {
            Ok(t) => {
                Signer::parse(&t).map_err(|e| NoteError::Key(format!("{}: {e}", path.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let s = Signer::generate(name)?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?;
                f.write_all(s.private_text().as_bytes())?;
                f.write_all(b"\n")?;
                f.sync_all()?;
                Ok(s)
            }
            Err(e) => Err(NoteError::Io(e)),
        }
    }
}

/// An Ed25519 verifier key with its note name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    pub name: String,
    public: [u8; 32],
    hash: [u8; 4],
}

impl Verifier {
    /// Parses `<name>+<hash>+<base64(0x01 || key)>`.
    pub fn parse(text: &str) -> Result<Verifier, NoteError> {
        let parts: Vec<&str> = text.trim().splitn(3, '+').collect();
        let [name, hash, key] = parts[..] else {
            return Err(NoteError::Key("expected name+hash+key".into()));
        };
        let raw = B64
            .decode(key)
            .map_err(|e| NoteError::Key(format!("base64: {e}")))?;
        if raw.len() != 33 || raw[0] != ALG_ED25519 {
            return Err(NoteError::Key("not an Ed25519 verifier key".into()));
        }
        let public: [u8; 32] = raw[1..].try_into().unwrap_or([0; 32]);
        let h = key_hash(name, &public);
        if hex::encode(h) != hash {
            return Err(NoteError::Key("key hash does not match the key".into()));
        }
        Ok(Verifier {
            name: name.to_string(),
            public,
            hash: h,
        })
    }

    pub fn text(&self) -> String {
        let mut raw = vec![ALG_ED25519];
        raw.extend_from_slice(&self.public);
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(self.hash),
            B64.encode(raw)
        )
    }

    /// Splits a note into its text and checks that this key signed it. `Ok(None)`: the note is
    /// well formed but carries no valid signature of this key.
    pub fn open<'a>(&self, note: &'a str) -> Result<Option<&'a str>, NoteError> {
        let (text, sigs) = split_note(note)?;
        for line in sigs.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return Err(NoteError::Malformed(format!("bad signature line {line:?}")));
            };
            let Some((name, b64)) = rest.split_once(' ') else {
                return Err(NoteError::Malformed(format!("bad signature line {line:?}")));
            };
            if name != self.name {
                continue;
            }
            let Ok(raw) = B64.decode(b64) else {
                return Ok(None);
            };
            if raw.len() != 68 || raw[..4] != self.hash {
                continue;
            }
            if UnparsedPublicKey::new(&ED25519, &self.public)
                .verify(text.as_bytes(), &raw[4..])
                .is_ok()
            {
                return Ok(Some(text));
            }
        }
        Ok(None)
    }
}

/// A note's text (with its final newline) and its signature block.
pub fn split_note(note: &str) -> Result<(&str, &str), NoteError> {
    let i = note
        .rfind("\n\n")
        .ok_or_else(|| NoteError::Malformed("no blank line before the signatures".into()))?;
    let (text, sigs) = (&note[..i + 1], &note[i + 2..]);
    if sigs.is_empty() || !sigs.ends_with('\n') {
        return Err(NoteError::Malformed("no signature lines".into()));
    }
    Ok((text, sigs))
}

/// A checkpoint's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: [u8; 32],
    pub extensions: Vec<String>,
}

impl Checkpoint {
    pub fn text(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        );
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    pub fn parse(text: &str) -> Result<Checkpoint, NoteError> {
        let bad = |w: &str| NoteError::Malformed(format!("checkpoint: {w}"));
        let body = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("no final newline"))?;
        let mut lines = body.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| bad("no origin"))?;
        let size = lines
            .next()
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| bad("tree size is not a number"))?;
        let root: [u8; 32] = lines
            .next()
            .and_then(|r| B64.decode(r).ok())
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| bad("root hash is not 32 bytes of base64"))?;
        let extensions: Vec<String> = lines.map(str::to_string).collect();
        if extensions.iter().any(String::is_empty) {
            return Err(bad("empty extension line"));
        }
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
            extensions,
        })
    }

    /// The value of the first extension line `key value`.
    pub fn extension(&self, key: &str) -> Option<&str> {
        self.extensions
            .iter()
            .find_map(|e| e.strip_prefix(key).and_then(|r| r.strip_prefix(' ')))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_open_and_reject() {
        let s = Signer::generate("example.com/audit").unwrap();
        let s2 = Signer::parse(&s.private_text()).unwrap();
        assert_eq!(s.verifier(), s2.verifier());
        let v = Verifier::parse(&s.verifier().text()).unwrap();
        let cp = Checkpoint {
            origin: "example.com/audit".into(),
            size: 7,
            root: [3; 32],
            extensions: vec!["counters crm steered=1".into()],
        };
        let note = s.sign(&cp.text());
        let text = v.open(&note).unwrap().unwrap();
        assert_eq!(Checkpoint::parse(text).unwrap(), cp);
        assert_eq!(cp.extension("counters"), Some("crm steered=1"));
        // Any change to the text breaks the signature.
        let forged = note.replace("\n7\n", "\n8\n");
        assert_eq!(v.open(&forged).unwrap(), None);
        // Another key with the same name does not verify.
        let other = Signer::generate("example.com/audit").unwrap().verifier();
        assert_eq!(other.open(&note).unwrap(), None);
        assert!(Verifier::parse("x+00000000+AAAA").is_err());
    }

    #[test]
    fn reference_key_hash() {
        // Key hash per the reference implementation: SHA-256(name || "\n" || 0x01 || key)[..4].
        let s = Signer::from_seed("PeterNeumann", [7; 32]).unwrap();
        let v = s.verifier();
        let t = v.text();
        assert!(t.starts_with("PeterNeumann+"), "{t}");
        assert_eq!(Verifier::parse(&t).unwrap(), v);
    }
}
