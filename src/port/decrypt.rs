//! `fieldsToDecryptPaths`: Port's `aes256-gcm` secret inputs (reference §6.4).
//!
//! The value is base64 of `IV (16 bytes) | ciphertext | tag (16 bytes)`, encrypted with
//! AES-256-GCM under the first 32 bytes of the client secret. Paths are dot paths
//! (`payload.properties.api_key`, numeric segments index arrays; a leading dot is
//! tolerated, as in the docs' example). A value that cannot be decrypted is left as it
//! is, with a warning, as Port's agent does.

use aes_gcm::aead::consts::U16;
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::aes::Aes256;
use aes_gcm::{AesGcm, Nonce};
use base64::Engine as _;
use serde_json::Value;

/// AES-256-GCM with Port's 16-byte IV.
type Cipher = AesGcm<Aes256, U16>;

const IV: usize = 16;
const TAG: usize = 16;

fn cipher(secret: &str) -> Result<Cipher, String> {
    let key = secret.as_bytes();
    if key.len() < 32 {
        return Err(format!(
            "the client secret has {} bytes; AES-256 needs its first 32",
            key.len()
        ));
    }
    Ok(Cipher::new_from_slice(&key[..32]).expect("a 32-byte key is valid"))
}

/// Decrypt one value.
pub fn decrypt(value: &str, secret: &str) -> Result<String, String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    if raw.len() < IV + TAG {
        return Err(format!("{} bytes is too short for IV and tag", raw.len()));
    }
    let (iv, sealed) = raw.split_at(IV);
    let plain = cipher(secret)?
        .decrypt(Nonce::from_slice(iv), sealed)
        .map_err(|_| "authentication failed (wrong key or altered value)".to_owned())?;
    String::from_utf8(plain).map_err(|_| "the plaintext is not UTF-8".to_owned())
}

/// Encrypt as Port does (for tests and tools).
pub fn encrypt(plain: &str, secret: &str, iv: [u8; IV]) -> Result<String, String> {
    let sealed = cipher(secret)?
        .encrypt(Nonce::from_slice(&iv), plain.as_bytes())
        .map_err(|_| "encryption failed".to_owned())?;
    let mut raw = iv.to_vec();
    raw.extend(sealed);
    Ok(base64::engine::general_purpose::STANDARD.encode(raw))
}

/// Decrypt the string at each path of `msg` in place; returns one warning per path
/// that was not decrypted (missing, not a string, or not decryptable).
pub fn decrypt_paths(msg: &mut Value, paths: &[String], secret: &str) -> Vec<String> {
    let mut warnings = Vec::new();
    for path in paths {
        let clean = path.trim_start_matches('.');
        let Some(slot) = lookup(msg, clean) else {
            warnings.push(format!("fieldsToDecryptPaths {path}: no such field"));
            continue;
        };
        let Value::String(text) = slot else {
            warnings.push(format!("fieldsToDecryptPaths {path}: not a string"));
            continue;
        };
        match decrypt(text, secret) {
            Ok(plain) => *slot = Value::String(plain),
            Err(e) => warnings.push(format!("fieldsToDecryptPaths {path}: {e}; left as it is")),
        }
    }
    warnings
}

fn lookup<'a>(v: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    path.split('.').try_fold(v, |cur, seg| match cur {
        Value::Object(m) => m.get_mut(seg),
        Value::Array(a) => a.get_mut(seg.parse::<usize>().ok()?),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-and-more";

    #[test]
    fn values_encrypted_as_port_does_decrypt_at_their_paths() {
        let api_key = encrypt("sk-live-42", SECRET, [7; 16]).unwrap();
        let token = encrypt("tøken ✓", SECRET, [9; 16]).unwrap();
        let mut msg = json!({"payload": {"properties": {"api_key": api_key, "plain": "x",
            "list": [{"token": token}]}}});
        let warnings = decrypt_paths(
            &mut msg,
            &[
                "payload.properties.api_key".into(),
                ".payload.properties.list.0.token".into(),
            ],
            SECRET,
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(msg["payload"]["properties"]["api_key"], "sk-live-42");
        assert_eq!(msg["payload"]["properties"]["list"][0]["token"], "tøken ✓");
        assert_eq!(msg["payload"]["properties"]["plain"], "x");
    }

    #[test]
    fn an_independent_implementation_agrees() {
        // Made with Python's `cryptography` (AESGCM(secret[:32]).encrypt(iv, text, None)),
        // IV = bytes 0..16, the way Port's agent decrypts it.
        let v = "AAECAwQFBgcICQoLDA0OD5Wtv8yhC7s49LzMbyCdnIKOJNoaU2x3Mjmslp1x6A==";
        assert_eq!(decrypt(v, SECRET).unwrap(), "sk-live-42 ✓");
        let iv: [u8; 16] = std::array::from_fn(|i| i as u8);
        assert_eq!(encrypt("sk-live-42 ✓", SECRET, iv).unwrap(), v);
    }

    #[test]
    fn a_value_that_does_not_decrypt_is_left_with_a_warning() {
        let other = encrypt("secret", "ffffffffffffffffffffffffffffffff", [1; 16]).unwrap();
        let mut msg = json!({"a": other.clone(), "b": "not base64!", "c": 5});
        let warnings = decrypt_paths(
            &mut msg,
            &["a".into(), "b".into(), "c".into(), "d.e".into()],
            SECRET,
        );
        assert_eq!(msg["a"], other);
        assert_eq!(warnings.len(), 4, "{warnings:?}");
        assert!(
            warnings[0].contains("authentication failed"),
            "{warnings:?}"
        );
        assert!(warnings[1].contains("not base64"), "{warnings:?}");
        assert!(warnings[2].contains("not a string"), "{warnings:?}");
        assert!(warnings[3].contains("no such field"), "{warnings:?}");
    }

    #[test]
    fn a_short_secret_is_named() {
        assert!(decrypt("AAAA", "short").unwrap_err().contains("too short"));
        let v = base64::engine::general_purpose::STANDARD.encode([0u8; 40]);
        assert_eq!(
            decrypt(&v, "short").unwrap_err(),
            "the client secret has 5 bytes; AES-256 needs its first 32"
        );
    }
}
