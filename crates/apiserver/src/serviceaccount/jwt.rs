//! Service account tokens as JSON Web Tokens: the signing key, the claims upstream puts in them
//! (`pkg/serviceaccount/claims.go`), signing and checking.
//!
//! Tokens are signed with ES256 (ECDSA P-256 with SHA-256), which every JWT library reads;
//! upstream defaults to RS256 only because its key is an RSA key. The key is generated once into
//! the data directory's `tls/` and never replaced while it exists, since every token handed out
//! (and every pod's projected token) depends on it.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey,
};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The file of the signing key under the data directory's `tls/`.
pub const KEY_FILE: &str = "service-account.key";
pub const ALGORITHM: &str = "ES256";
/// The DER prefix of a P-256 public key in X.509 SubjectPublicKeyInfo form, before the 65-byte
/// uncompressed point: the key id is a hash of that form, as upstream's.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Errors of loading or creating the signing key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading the service account key {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing the service account key {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error("the service account key {path} is not a PKCS#8 PEM private key")]
    Pem { path: PathBuf },
    // ring's errors carry no detail, so there is nothing to keep as a source.
    #[error("the service account key {path} is not an ECDSA P-256 key")]
    NotP256 { path: PathBuf },
    #[error("generating the service account key")]
    Generate,
}

/// Why a token was not accepted. Only logged: the client gets a plain 401, as upstream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not a JSON web token")]
    Malformed,
    #[error("unsupported signing algorithm {0}")]
    Algorithm(String),
    #[error("invalid signature")]
    Signature,
    #[error("issued by {0}, not by this cluster")]
    Issuer(String),
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token audiences {0:?} are not accepted")]
    Audience(Vec<String>),
    #[error("signing failed")]
    Sign,
}

/// A name and uid, as the `kubernetes.io` claims refer to objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Ref {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

/// Upstream's private `kubernetes.io` claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KubernetesClaims {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Ref>,
    #[serde(default)]
    pub serviceaccount: Ref,
    /// When a kubelet-refreshed token is past the lifetime the pod asked for (upstream's
    /// extended expiry of 3607-second tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnafter: Option<i64>,
}

/// The claims of a service account token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub iss: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
    pub nbf: i64,
    pub sub: String,
}

/// `aud` may be one string or a list (RFC 7519).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Aud::deserialize(d)? {
        Aud::One(a) => vec![a],
        Aud::Many(a) => a,
    })
}

/// Clock skew tolerated on `exp` and `nbf`, as upstream's JWT library (one minute).
pub const LEEWAY_SECONDS: i64 = 60;

impl Claims {
    /// Checks the time window and the audience: at least one of the token's audiences must be
    /// one the server accepts.
    pub fn check(&self, now: i64, accepted_audiences: &[String]) -> Result<(), TokenError> {
        if now > self.exp + LEEWAY_SECONDS {
            return Err(TokenError::Expired);
        }
        if now + LEEWAY_SECONDS < self.nbf {
            return Err(TokenError::NotYetValid);
        }
        if !self.aud.iter().any(|a| accepted_audiences.contains(a)) {
            return Err(TokenError::Audience(self.aud.clone()));
        }
        Ok(())
    }
}

/// The key service account tokens are signed with.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Loads `<tls_dir>/service-account.key`, creating it (mode 0600) on first start.
    pub fn load_or_create(tls_dir: &Path) -> Result<Self, KeyError> {
        let path = tls_dir.join(KEY_FILE);
        if !path.exists() {
            let rng = SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).map_err(|_| KeyError::Generate)?;
            let write_err = |source| KeyError::Write { path: path.clone(), source };
            fs::create_dir_all(tls_dir).map_err(write_err)?;
            // create_new: a server starting at the same time keeps the key that won.
            match fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
                Ok(mut file) => {
                    file.write_all(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes()).map_err(write_err)?;
                    file.sync_all().map_err(write_err)?;
                    tracing::info!(path = %path.display(), "created the service account signing key");
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(write_err(source)),
            }
        }
        let text = fs::read(&path).map_err(|source| KeyError::Read { path: path.clone(), source })?;
        let der = PrivatePkcs8KeyDer::from_pem_slice(&text).map_err(|_| KeyError::Pem { path: path.clone() })?;
        Self::from_pkcs8(der.secret_pkcs8_der()).map_err(|_| KeyError::NotP256 { path })
    }

    /// A key from PKCS#8 DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, ring::error::KeyRejected> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())?;
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(pair.public_key().as_ref());
        let kid = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &spki));
        Ok(Self { pair, kid })
    }

    /// A fresh key that is not stored anywhere (tests).
    pub fn generate() -> Result<Self, KeyError> {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| KeyError::Generate)?;
        Self::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Generate)
    }

    /// The key id tokens name in their header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A signed token carrying `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let header = json!({"alg": ALGORITHM, "kid": self.kid});
        let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).map_err(|_| TokenError::Sign)?);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).map_err(|_| TokenError::Sign)?);
        let signing_input = format!("{header}.{payload}");
        let signature = self.pair.sign(&SystemRandom::new(), signing_input.as_bytes()).map_err(|_| TokenError::Sign)?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref())))
    }

    /// The claims of a token this key signed; the signature is checked, nothing else.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenError::Malformed);
        let header: Value = serde_json::from_slice(&decode(header)?).map_err(|_| TokenError::Malformed)?;
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or_default();
        if alg != ALGORITHM {
            return Err(TokenError::Algorithm(alg.to_string()));
        }
        let signing_input = &token[..token.len() - signature.len() - 1];
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.pair.public_key().as_ref())
            .verify(signing_input.as_bytes(), &decode(signature)?)
            .map_err(|_| TokenError::Signature)?;
        serde_json::from_slice(&decode(payload)?).map_err(|_| TokenError::Malformed)
    }

    /// The public key as a JSON Web Key Set (served at `/openid/v1/jwks`).
    pub fn jwks(&self) -> Value {
        let point = self.pair.public_key().as_ref();
        json!({"keys": [{
            "use": "sig",
            "kty": "EC",
            "kid": self.kid,
            "crv": "P-256",
            "alg": ALGORITHM,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }]})
    }
}

/// The issuer of a token, read without checking anything, so that tokens of other issuers can
/// be told apart from broken ones of ours.
pub fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims.get("iss").and_then(Value::as_str).map(str::to_string)
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

    fn claims(now: i64) -> Claims {
        Claims {
            aud: vec![ISSUER.into()],
            exp: now + 3600,
            iat: now,
            iss: ISSUER.into(),
            jti: Some("id".into()),
            kubernetes: KubernetesClaims {
                namespace: "ns".into(),
                serviceaccount: Ref { name: "default".into(), uid: "u1".into() },
                pod: Some(Ref { name: "p".into(), uid: "u2".into() }),
                ..Default::default()
            },
            nbf: now,
            sub: "system:serviceaccount:ns:default".into(),
        }
    }

    #[test]
    fn signed_token_verifies_to_its_claims() {
        let key = SigningKey::generate().unwrap();
        let c = claims(1000);
        let token = key.sign(&c).unwrap();
        assert_eq!(key.verify(&token).unwrap(), c);
        assert_eq!(unverified_issuer(&token).as_deref(), Some(ISSUER));
    }

    #[test]
    fn claims_are_named_as_upstream() {
        let key = SigningKey::generate().unwrap();
        let token = key.sign(&claims(1000)).unwrap();
        let payload: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
        assert_eq!(payload["kubernetes.io"]["serviceaccount"], json!({"name": "default", "uid": "u1"}));
        assert_eq!(payload["kubernetes.io"]["pod"], json!({"name": "p", "uid": "u2"}));
        assert_eq!(payload["kubernetes.io"]["namespace"], "ns");
        assert!(payload["kubernetes.io"].get("secret").is_none());
        assert_eq!(payload["aud"], json!([ISSUER]));
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header, json!({"alg": "ES256", "kid": key.kid()}));
    }

    #[test]
    fn token_of_another_key_or_altered_is_rejected() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let token = other.sign(&claims(1000)).unwrap();
        assert_eq!(key.verify(&token), Err(TokenError::Signature));

        let token = key.sign(&claims(1000)).unwrap();
        let mut forged = claims(1000);
        forged.sub = "system:serviceaccount:kube-system:admin".into();
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let parts: Vec<&str> = token.split('.').collect();
        let altered = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
        assert_eq!(key.verify(&altered), Err(TokenError::Signature));
    }

    #[test]
    fn unsigned_and_malformed_tokens_are_rejected() {
        let key = SigningKey::generate().unwrap();
        let token = key.sign(&claims(1000)).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert_eq!(key.verify(&format!("{none_header}.{}.", parts[1])), Err(TokenError::Algorithm("none".into())));
        assert_eq!(key.verify("abc"), Err(TokenError::Malformed));
        assert_eq!(key.verify("a.b.c.d"), Err(TokenError::Malformed));
        assert_eq!(key.verify(&format!("{}.{}", parts[0], parts[1])), Err(TokenError::Malformed));
    }

    #[test]
    fn expiry_and_not_before_allow_a_minute_of_skew() {
        let c = claims(1000);
        let auds = vec![ISSUER.to_string()];
        assert_eq!(c.check(1000, &auds), Ok(()));
        assert_eq!(c.check(1000 + 3600 + 60, &auds), Ok(()));
        assert_eq!(c.check(1000 + 3600 + 61, &auds), Err(TokenError::Expired));
        assert_eq!(c.check(1000 - 60, &auds), Ok(()));
        assert_eq!(c.check(1000 - 61, &auds), Err(TokenError::NotYetValid));
    }

    #[test]
    fn audience_must_be_one_the_server_accepts() {
        let mut c = claims(1000);
        c.aud = vec!["vault".into(), ISSUER.into()];
        assert_eq!(c.check(1000, &[ISSUER.to_string()]), Ok(()));
        c.aud = vec!["vault".into()];
        assert_eq!(c.check(1000, &[ISSUER.to_string()]), Err(TokenError::Audience(vec!["vault".into()])));
    }

    #[test]
    fn single_string_audience_is_read() {
        let c: Claims = serde_json::from_value(json!({
            "aud": "x", "exp": 1, "iat": 1, "nbf": 1, "iss": "i", "sub": "s",
            "kubernetes.io": {"namespace": "n", "serviceaccount": {"name": "a", "uid": "b"}},
        }))
        .unwrap();
        assert_eq!(c.aud, vec!["x".to_string()]);
    }

    #[test]
    fn key_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let first = SigningKey::load_or_create(dir.path()).unwrap();
        let again = SigningKey::load_or_create(dir.path()).unwrap();
        assert_eq!(first.kid(), again.kid());
        let token = first.sign(&claims(1000)).unwrap();
        assert!(again.verify(&token).is_ok());
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let jwks = first.jwks();
        assert_eq!(jwks["keys"][0]["kid"], first.kid());
        assert_eq!(URL_SAFE_NO_PAD.decode(jwks["keys"][0]["x"].as_str().unwrap()).unwrap().len(), 32);
    }
}
