//! The cluster's shared secrets kept in the datastore, so that several servers on one etcd are
//! one cluster (k3s' "bootstrap data"): the CA certificate and key, which every kubeconfig and
//! node trusts, and the service account signing key, so that a token issued by one server is
//! accepted by all.
//!
//! They are stored encrypted with the cluster token (`--token`), under
//! `/bootstrap/<first 12 hex digits of SHA-256(token)>` as k3s does: a server with another
//! token finds nothing there, and anybody who can read the datastore learns nothing without the
//! token. Encryption: AES-256-GCM with a key derived from the token by PBKDF2-HMAC-SHA256 over a
//! random salt.
//!
//! The first server (nothing stored yet) creates its certificates as a lone server would and
//! stores them with create-if-absent; a server that loses that race, or that starts later,
//! writes the stored files into its data directory before loading its certificates, and its own
//! leaf certificates are then re-issued by the shared CA.

use std::num::NonZeroU32;
use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tug_apiserver::pki::ClusterPki;
use tug_store::{Store, StoreError};

/// The files shared between servers, relative to the data directory.
const SHARED_FILES: [&str; 3] = ["tls/ca.crt", "tls/ca.key", "tls/service-account.key"];

/// Where the sealed secrets live, one key per token.
const PREFIX: &str = "/bootstrap/";

/// PBKDF2 rounds: enough to make guessing a token from a stolen datastore slow, cheap once at
/// start.
const PBKDF2_ROUNDS: u32 = 100_000;

/// What is stored: the salt and nonce in the clear, the files' contents sealed.
#[derive(Serialize, Deserialize)]
struct Sealed {
    salt: String,
    nonce: String,
    ciphertext: String,
}

/// The datastore key for `token`'s secrets.
pub fn key_for(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    format!("{PREFIX}{}", &hex::encode(digest)[..12])
}

/// Before the certificates are loaded: if the datastore holds the cluster's secrets for
/// `token`, writes them into `data_dir` (replacing a CA of this server's own). Returns whether
/// it found them.
pub async fn restore(store: &dyn Store, data_dir: &Path, token: &str) -> anyhow::Result<bool> {
    let Some(stored) = store.get(&key_for(token)).await.context("reading the cluster's bootstrap data")? else {
        // Secrets under another token's key: this datastore belongs to a cluster with another
        // token; starting a second CA beside it would split the cluster (k3s refuses too).
        let others = store.count(PREFIX).await.context("reading the cluster's bootstrap data")?;
        if others > 0 {
            bail!("the datastore already holds a cluster's bootstrap data sealed with a different --token")
        }
        return Ok(false);
    };
    let files = open(&stored.value, token)?;
    write_files(data_dir, &files)?;
    Ok(true)
}

/// After the certificates exist: stores this server's secrets unless another server stored
/// theirs first, in which case those are written into `data_dir` and `Ok(false)` says the
/// certificates must be loaded again.
pub async fn publish(store: &dyn Store, data_dir: &Path, token: &str) -> anyhow::Result<bool> {
    let mut files = Vec::new();
    for name in SHARED_FILES {
        let path = data_dir.join(name);
        let content = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        files.push((name.to_string(), content));
    }
    let sealed = seal(&files, token)?;
    match store.create(&key_for(token), Bytes::from(sealed)).await {
        Ok(_) => {
            tracing::info!("stored the cluster's CA and signing key in the datastore for other servers");
            Ok(true)
        }
        Err(StoreError::AlreadyExists { .. }) => {
            restore(store, data_dir, token).await?;
            Ok(false)
        }
        Err(e) => Err(e).context("storing the cluster's bootstrap data"),
    }
}

/// Checks that the server at `url` is one of this cluster's: it must present a certificate of
/// the CA taken from the datastore and accept this server's admin credentials, issued by it.
pub async fn check_peer(url: &str, pki: &ClusterPki) -> anyhow::Result<()> {
    let uri: http::Uri = url.parse().with_context(|| format!("--server {url:?} is not a URL"))?;
    let mut config = kube::Config::new(uri);
    let ca = rustls_pki_types::pem::PemObject::pem_slice_iter(pki.ca_pem().as_bytes())
        .collect::<Result<Vec<rustls_pki_types::CertificateDer<'static>>, _>>()
        .context("reading the cluster CA")?;
    config.root_cert = Some(ca.into_iter().map(|d| d.to_vec()).collect());
    config.auth_info.client_certificate_data = Some(STANDARD.encode(pki.admin_cert_pem()));
    config.auth_info.client_key_data = Some(STANDARD.encode(pki.admin_key_pem()).into());
    config.connect_timeout = Some(std::time::Duration::from_secs(10));
    config.read_timeout = Some(std::time::Duration::from_secs(10));
    let client = kube::Client::try_from(config).context("building a client for --server")?;
    client.apiserver_version().await.with_context(|| {
        format!("the server at {url} is not a server of the cluster whose CA is in the datastore (or is unreachable)")
    })?;
    Ok(())
}

fn derive_key(token: &str, salt: &[u8]) -> LessSafeKey {
    let mut key = [0u8; 32];
    let rounds = NonZeroU32::new(PBKDF2_ROUNDS).expect("non-zero rounds");
    ring::pbkdf2::derive(ring::pbkdf2::PBKDF2_HMAC_SHA256, rounds, salt, token.as_bytes(), &mut key);
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("a 32-byte key fits AES-256"))
}

fn seal(files: &[(String, Vec<u8>)], token: &str) -> anyhow::Result<Vec<u8>> {
    let rng = SystemRandom::new();
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut salt).map_err(|_| anyhow::anyhow!("no randomness for the salt"))?;
    rng.fill(&mut nonce).map_err(|_| anyhow::anyhow!("no randomness for the nonce"))?;
    let plain: Vec<(String, String)> = files.iter().map(|(name, data)| (name.clone(), STANDARD.encode(data))).collect();
    let mut buffer = serde_json::to_vec(&plain)?;
    derive_key(token, &salt)
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buffer)
        .map_err(|_| anyhow::anyhow!("sealing the bootstrap data"))?;
    let sealed =
        Sealed { salt: STANDARD.encode(salt), nonce: STANDARD.encode(nonce), ciphertext: STANDARD.encode(buffer) };
    Ok(serde_json::to_vec(&sealed)?)
}

fn open(stored: &[u8], token: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let sealed: Sealed = serde_json::from_slice(stored).context("the stored bootstrap data is not readable")?;
    let salt = STANDARD.decode(&sealed.salt)?;
    let nonce: [u8; NONCE_LEN] =
        STANDARD.decode(&sealed.nonce)?.try_into().map_err(|_| anyhow::anyhow!("bad nonce in the bootstrap data"))?;
    let mut buffer = STANDARD.decode(&sealed.ciphertext)?;
    let Ok(plain) =
        derive_key(token, &salt).open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buffer)
    else {
        bail!(
            "the cluster's bootstrap data does not decrypt with this --token (was the datastore set up with another?)"
        )
    };
    let files: Vec<(String, String)> = serde_json::from_slice(plain).context("decrypted bootstrap data")?;
    files
        .into_iter()
        .filter(|(name, _)| SHARED_FILES.contains(&name.as_str()))
        .map(|(name, data)| Ok((name, STANDARD.decode(data)?)))
        .collect()
}

/// Writes the shared files, private (0600) in a private directory, each replaced atomically.
fn write_files(data_dir: &Path, files: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    for (name, content) in files {
        let path = data_dir.join(name);
        if std::fs::read(&path).is_ok_and(|current| &current == content) {
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        let temp = path.with_extension("bootstrap-tmp");
        {
            use std::io::Write;
            let mut file =
                std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temp)?;
            file.write_all(content)?;
            file.sync_all()?;
        }
        std::fs::rename(&temp, &path).with_context(|| format!("writing {}", path.display()))?;
        tracing::info!(file = %path.display(), "took the cluster's shared file from the datastore");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_files_open_with_the_same_token_only() {
        let files = vec![("tls/ca.crt".to_string(), b"cert".to_vec()), ("tls/ca.key".to_string(), b"key".to_vec())];
        let sealed = seal(&files, "secret").unwrap();
        assert!(!String::from_utf8_lossy(&sealed).contains("key\""), "contents are not in the clear");
        assert_eq!(open(&sealed, "secret").unwrap(), files);
        let error = open(&sealed, "other").unwrap_err().to_string();
        assert!(error.contains("does not decrypt with this --token"), "{error}");
    }

    #[test]
    fn the_key_names_the_token_by_a_short_hash() {
        let key = key_for("secret");
        assert!(key.starts_with("/bootstrap/") && key.len() == "/bootstrap/".len() + 12, "{key}");
        assert_ne!(key, key_for("other"));
    }

    #[tokio::test]
    async fn the_second_server_takes_the_first_ones_secrets() {
        let store = tug_store::memory::MemoryStore::new();
        let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for (dir, tag) in [(&first, "one"), (&second, "two")] {
            for name in SHARED_FILES {
                let path = dir.path().join(name);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, format!("{tag} {name}")).unwrap();
            }
        }
        assert!(publish(&store, first.path(), "t").await.unwrap(), "the first server stores its own");
        assert!(!publish(&store, second.path(), "t").await.unwrap(), "the second finds them stored");
        for name in SHARED_FILES {
            assert_eq!(std::fs::read_to_string(second.path().join(name)).unwrap(), format!("one {name}"));
        }
        let third = tempfile::tempdir().unwrap();
        assert!(restore(&store, third.path(), "t").await.unwrap());
        let error = restore(&store, third.path(), "other token").await.unwrap_err().to_string();
        assert!(error.contains("different --token"), "{error}");
    }
}
