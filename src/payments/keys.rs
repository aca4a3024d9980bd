//! The keys Alipay and WeChat Pay sign with: RSA with SHA-256 (PKCS #1 v1.5), the merchant's
//! private key for requests, the provider's public key (or certificate) for what it sends back;
//! and WeChat Pay's AES-256-GCM for encrypted notifications. All of it is `ring`'s (the
//! constant-time implementation rustls already brings); PEM parsing is rustls-pki-types', X.509
//! and SubjectPublicKeyInfo parsing x509-parser's.

use base64::Engine;
use ring::signature::{self, RsaKeyPair, UnparsedPublicKey};
use rustls_pki_types::pem::{PemObject, SectionKind};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A merchant's RSA private key. Its `Debug` prints nothing of the key.
pub struct PrivateKey(RsaKeyPair);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(..)")
    }
}

/// The sections of a PEM text (kind, DER).
fn pem_sections(text: &str) -> Result<Vec<(SectionKind, Vec<u8>)>, String> {
    <(SectionKind, Vec<u8>)>::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("unreadable PEM: {e:?}"))
}

/// The DER of bare base64 (whitespace ignored), as Alipay's key tool writes keys.
fn bare_base64(text: &str) -> Result<Vec<u8>, String> {
    B64.decode(text.split_whitespace().collect::<String>())
        .map_err(|_| "neither PEM nor base64".to_string())
}

impl PrivateKey {
    /// From PEM (`BEGIN PRIVATE KEY` / `BEGIN RSA PRIVATE KEY`) or from the bare base64 of the
    /// DER, as Alipay's key tool writes it (PKCS #8 or PKCS #1).
    pub fn parse(text: &str) -> Result<PrivateKey, String> {
        let text = text.trim();
        let bad = |e: ring::error::KeyRejected| format!("not an RSA private key: {e}");
        if text.contains("-----BEGIN") {
            for (kind, der) in pem_sections(text)? {
                match kind {
                    SectionKind::PrivateKey => {
                        return RsaKeyPair::from_pkcs8(&der).map(PrivateKey).map_err(bad)
                    }
                    SectionKind::RsaPrivateKey => {
                        return RsaKeyPair::from_der(&der).map(PrivateKey).map_err(bad)
                    }
                    _ => continue,
                }
            }
            return Err("no private key in the PEM text".into());
        }
        let der = bare_base64(text)?;
        RsaKeyPair::from_pkcs8(&der)
            .or_else(|_| RsaKeyPair::from_der(&der))
            .map(PrivateKey)
            .map_err(bad)
    }

    /// The base64 of the RSA-SHA256 (PKCS #1 v1.5) signature of `message`.
    pub fn sign(&self, message: &[u8]) -> Result<String, String> {
        let rng = ring::rand::SystemRandom::new();
        let mut sig = vec![0u8; self.0.public().modulus_len()];
        self.0
            .sign(&signature::RSA_PKCS1_SHA256, &rng, message, &mut sig)
            .map_err(|_| "RSA signing failed".to_string())?;
        Ok(B64.encode(sig))
    }
}

/// A provider's RSA public key (PKCS #1 DER inside).
#[derive(Clone)]
pub struct PublicKey(Vec<u8>);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({} bytes)", self.0.len())
    }
}

impl PublicKey {
    /// From PEM (`BEGIN PUBLIC KEY`, or a `CERTIFICATE`, whose key is taken) or the bare
    /// base64 of a SubjectPublicKeyInfo, as Alipay's console shows it.
    pub fn parse(text: &str) -> Result<PublicKey, String> {
        let text = text.trim();
        if text.contains("-----BEGIN") {
            for (kind, der) in pem_sections(text)? {
                match kind {
                    SectionKind::PublicKey => return PublicKey::from_spki(&der),
                    SectionKind::Certificate => return Certificate::from_der(&der).map(|c| c.1),
                    _ => continue,
                }
            }
            return Err("no public key or certificate in the PEM text".into());
        }
        PublicKey::from_spki(&bare_base64(text)?)
    }

    fn from_spki(der: &[u8]) -> Result<PublicKey, String> {
        use x509_parser::prelude::FromDer;
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der)
            .map_err(|e| format!("not a public key: {e}"))?;
        Ok(PublicKey(spki.subject_public_key.data.to_vec()))
    }

    /// Checks a base64 RSA-SHA256 signature of `message`.
    pub fn verify(&self, message: &[u8], signature_b64: &str) -> bool {
        let Ok(sig) = B64.decode(signature_b64.trim()) else {
            return false;
        };
        UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &self.0)
            .verify(message, &sig)
            .is_ok()
    }
}

/// An X.509 certificate's serial number (upper-case hex, as WeChat Pay names its platform
/// certificates) and key.
pub struct Certificate;

impl Certificate {
    /// The first certificate in `pem`: its serial and public key.
    pub fn parse_pem(pem: &str) -> Result<(String, PublicKey), String> {
        pem_sections(pem)?
            .into_iter()
            .find(|(kind, _)| *kind == SectionKind::Certificate)
            .ok_or_else(|| "no certificate in the PEM text".to_string())
            .and_then(|(_, der)| Certificate::from_der(&der))
    }

    fn from_der(der: &[u8]) -> Result<(String, PublicKey), String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("not a certificate: {e}"))?;
        let serial = hex::encode_upper(cert.raw_serial());
        let key = cert.public_key().subject_public_key.data.to_vec();
        Ok((serial, PublicKey(key)))
    }
}

/// Opens AES-256-GCM `ciphertext_b64` (the tag at its end) with `key` (32 bytes), a 12-byte
/// `nonce` and the associated data: WeChat Pay's `AEAD_AES_256_GCM` resources.
pub fn aes_gcm_open(
    key: &[u8],
    nonce: &str,
    aad: &str,
    ciphertext_b64: &str,
) -> Result<Vec<u8>, String> {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let key = UnboundKey::new(&AES_256_GCM, key)
        .map_err(|_| "the APIv3 key must be 32 bytes".to_string())?;
    let nonce = Nonce::try_assume_unique_for_key(nonce.as_bytes())
        .map_err(|_| "the nonce must be 12 bytes".to_string())?;
    let mut data = B64
        .decode(ciphertext_b64)
        .map_err(|_| "the ciphertext is not base64".to_string())?;
    let plain = LessSafeKey::new(key)
        .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut data)
        .map_err(|_| "the resource does not decrypt (wrong APIv3 key, or tampered)".to_string())?;
    Ok(plain.to_vec())
}

/// Seals `plain` as [`aes_gcm_open`] opens it (the mock provider in the tests encrypts with it).
pub fn aes_gcm_seal(key: &[u8], nonce: &str, aad: &str, plain: &[u8]) -> Result<String, String> {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let key = UnboundKey::new(&AES_256_GCM, key).map_err(|_| "bad key".to_string())?;
    let nonce =
        Nonce::try_assume_unique_for_key(nonce.as_bytes()).map_err(|_| "bad nonce".to_string())?;
    let mut data = plain.to_vec();
    LessSafeKey::new(key)
        .seal_in_place_append_tag(nonce, Aad::from(aad.as_bytes()), &mut data)
        .map_err(|_| "sealing failed".to_string())?;
    Ok(B64.encode(data))
}

/// A random string of `n` letters and digits (nonces).
pub fn nonce(n: usize) -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aes_gcm_round_trips_and_refuses_tampering() {
        let key = [7u8; 32];
        let sealed = aes_gcm_seal(&key, "0123456789ab", "transaction", b"{\"a\":1}").unwrap();
        assert_eq!(
            aes_gcm_open(&key, "0123456789ab", "transaction", &sealed).unwrap(),
            b"{\"a\":1}"
        );
        assert!(aes_gcm_open(&key, "0123456789ab", "certificate", &sealed).is_err());
        assert!(aes_gcm_open(&[8u8; 32], "0123456789ab", "transaction", &sealed).is_err());
        assert!(aes_gcm_open(&key[..16], "0123456789ab", "transaction", &sealed).is_err());
    }
}
