//! The cluster's certificates, kept as PEM files under `<data-dir>/tls/` the way k3s keeps them.
//!
//! One CA signs everything: the API server's serving certificate, the admin client certificate
//! written into the admin kubeconfig, the client certificate the API server presents to node
//! agents, and the client and serving certificates issued later to nodes that join.
//! The CA is created once and never replaced while its files exist, because every kubeconfig and
//! every node trusts it; leaf certificates are cheap and are re-issued whenever they no longer fit
//! (missing, not issued by this CA, close to expiry, or, for the serving certificate, lacking a
//! requested name).
//!
//! Everything here is blocking file I/O and key generation: call it before the runtime serves
//! requests or from `spawn_blocking`.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData as _, SanType,
};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::error::{PEMError, X509Error};
use x509_parser::extensions::GeneralName;

const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Leaf certificates closer than this to expiry are re-issued at start, as k3s does, so a server
/// restarted now and then never serves an expired certificate.
const RENEW_BEFORE: Duration = Duration::from_secs(90 * 24 * 60 * 60);
/// Certificates start to be valid a little in the past so that a node whose clock lags the
/// server's by a few minutes still accepts a certificate issued a moment ago.
const BACKDATE: Duration = Duration::from_secs(60 * 60);

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const SERVING_CERT: &str = "serving.crt";
const SERVING_KEY: &str = "serving.key";
const ADMIN_CERT: &str = "client-admin.crt";
const ADMIN_KEY: &str = "client-admin.key";
const KUBELET_CLIENT_CERT: &str = "apiserver-kubelet-client.crt";
const KUBELET_CLIENT_KEY: &str = "apiserver-kubelet-client.key";

const SERVING_CN: &str = "kube-apiserver";
/// The identity of the admin kubeconfig: `system:masters` is bound to `cluster-admin` by the
/// default RBAC policy, as in upstream and k3s.
pub const ADMIN_USER: &str = "system:admin";
pub const ADMIN_GROUP: &str = "system:masters";
/// The identity the API server presents to node agents when it proxies logs, exec and the
/// like, as kubeadm names it; node agents authorize it as a member of `system:masters`.
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;

/// Errors of loading, creating and using the cluster's certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("creating directory {path}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("reading {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read the ca key {path}; the ca is never regenerated while its certificate exists")]
    ReadCaKey { path: PathBuf, source: io::Error },
    #[error(
        "the ca certificate {cert} exists but its key {key} does not; restore the key, or remove both files to create a new ca (every kubeconfig and node must then be given the new ca)"
    )]
    CaKeyMissing { cert: PathBuf, key: PathBuf },
    #[error(
        "the ca key {key} exists but its certificate {cert} does not; restore the certificate, or remove both files to create a new ca"
    )]
    CaCertMissing { cert: PathBuf, key: PathBuf },
    #[error("the ca key {key} does not belong to the ca certificate {cert}")]
    CaKeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("parsing the private key {path}")]
    ParseKey { path: PathBuf, source: rcgen::Error },
    #[error("reading pem from {path}")]
    ParsePem { path: PathBuf, source: x509_parser::nom::Err<PEMError> },
    #[error("parsing the certificate {path}")]
    ParseCert { path: PathBuf, source: x509_parser::nom::Err<X509Error> },
    #[error("using {path} as the issuing ca")]
    CaIssuer { path: PathBuf, source: rcgen::Error },
    #[error("cannot put {count} organizations in the certificate for {common_name}: at most one is supported")]
    TooManyOrganizations { common_name: String, count: usize },
    #[error("generating the certificate for {common_name}")]
    Generate { common_name: String, source: rcgen::Error },
    #[error("building the tls client certificate verifier")]
    ClientVerifier { source: rustls::server::VerifierBuilderError },
    #[error("building the tls server configuration")]
    ServerConfig { source: rustls::Error },
    #[error("building the tls client configuration for node agents")]
    ClientConfig { source: rustls::Error },
    #[error("encoding the kubeconfig {path}")]
    EncodeKubeconfig { path: PathBuf, source: serde_yaml::Error },
}

/// The names the serving certificate must carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PkiOptions {
    pub ip_sans: Vec<IpAddr>,
    pub dns_sans: Vec<String>,
}

impl PkiOptions {
    /// The names every API server answers to: loopback, `localhost`, and the in-cluster
    /// `kubernetes` service by IP and by each of its DNS names. Add the host's addresses, the bind
    /// address and the hostname with [`PkiOptions::with_ip`] and [`PkiOptions::with_dns`].
    pub fn new(service_ip: IpAddr, cluster_domain: &str) -> Self {
        Self::default()
            .with_ip(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .with_ip(service_ip)
            .with_dns("localhost")
            .with_dns("kubernetes")
            .with_dns("kubernetes.default")
            .with_dns("kubernetes.default.svc")
            .with_dns(format!("kubernetes.default.svc.{cluster_domain}"))
    }

    /// Adds an IP address SAN. The unspecified address (a `--bind-address` of `0.0.0.0`) is not
    /// an address anyone connects to, so it is ignored rather than put in the certificate.
    pub fn with_ip(mut self, ip: IpAddr) -> Self {
        if !ip.is_unspecified() && !self.ip_sans.contains(&ip) {
            self.ip_sans.push(ip);
        }
        self
    }

    /// Adds a DNS SAN. DNS names compare case-insensitively, so they are kept lower-case.
    pub fn with_dns(mut self, name: impl Into<String>) -> Self {
        let name = name.into().to_ascii_lowercase();
        if !name.is_empty() && !self.dns_sans.contains(&name) {
            self.dns_sans.push(name);
        }
        self
    }
}

/// A certificate with its private key, as loaded from or written to disk.
struct Leaf {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
    key_der: PrivatePkcs8KeyDer<'static>,
}

/// The cluster's CA and the certificates the server itself uses.
pub struct ClusterPki {
    tls_dir: PathBuf,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    serving: Leaf,
    admin: Leaf,
    kubelet_client: Leaf,
}

impl fmt::Debug for ClusterPki {
    // Private keys stay out of logs: show only where the files are.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterPki").field("tls_dir", &self.tls_dir).finish_non_exhaustive()
    }
}

impl ClusterPki {
    /// Loads the certificates under `dir/tls/`, creating what is missing and re-issuing leaf
    /// certificates that no longer fit.
    pub fn load_or_create(dir: &Path, opts: &PkiOptions) -> Result<Self, PkiError> {
        let tls_dir = dir.join("tls");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&tls_dir)
            .map_err(|source| PkiError::CreateDir { path: tls_dir.clone(), source })?;

        let (ca_pem, ca_der, issuer) = load_or_create_ca(&tls_dir)?;

        let serving = match load_leaf(&tls_dir, SERVING_CERT, SERVING_KEY, &ca_der)? {
            Stored::Reusable(leaf) => {
                let missing = missing_sans(&tls_dir.join(SERVING_CERT), &leaf, opts)?;
                match missing {
                    None => leaf,
                    Some(missing) => {
                        tracing::info!(%missing, "re-issuing the serving certificate for new names");
                        issue_serving(&tls_dir, &issuer, opts)?
                    }
                }
            }
            Stored::Unusable(reason) => {
                tracing::info!(reason, "issuing the serving certificate");
                issue_serving(&tls_dir, &issuer, opts)?
            }
        };

        let admin = match load_leaf(&tls_dir, ADMIN_CERT, ADMIN_KEY, &ca_der)? {
            Stored::Reusable(leaf) => leaf,
            Stored::Unusable(reason) => {
                tracing::info!(reason, "issuing the admin client certificate");
                let (cert_pem, key) = sign_client(&issuer, ADMIN_USER, &[ADMIN_GROUP])?;
                write_leaf(&tls_dir, ADMIN_CERT, ADMIN_KEY, cert_pem, &key)?
            }
        };

        let kubelet_client = match load_leaf(&tls_dir, KUBELET_CLIENT_CERT, KUBELET_CLIENT_KEY, &ca_der)? {
            Stored::Reusable(leaf) => leaf,
            Stored::Unusable(reason) => {
                tracing::info!(reason, "issuing the kubelet client certificate");
                let (cert_pem, key) = sign_client(&issuer, KUBELET_CLIENT_USER, &[ADMIN_GROUP])?;
                write_leaf(&tls_dir, KUBELET_CLIENT_CERT, KUBELET_CLIENT_KEY, cert_pem, &key)?
            }
        };

        Ok(Self { tls_dir, ca_pem, ca_der, issuer, serving, admin, kubelet_client })
    }

    /// The directory holding the PEM files.
    pub fn tls_dir(&self) -> &Path {
        &self.tls_dir
    }

    /// The CA certificate, which clients and nodes trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The certificate the API server presents.
    pub fn serving_cert_pem(&self) -> &str {
        &self.serving.cert_pem
    }

    /// The `system:admin` client certificate that goes into the admin kubeconfig.
    pub fn admin_cert_pem(&self) -> &str {
        &self.admin.cert_pem
    }

    /// The user the admin client certificate authenticates as, for the server's own components,
    /// which reach it in memory rather than over TLS ([`crate::ApiServer::serve_in_process`]) and
    /// so act with the identity they would have had with the admin kubeconfig.
    pub fn admin_identity(&self) -> Option<crate::authn::UserInfo> {
        crate::authn::identity_from_client_cert(self.admin.cert_der.as_ref())
    }

    /// The key of [`ClusterPki::admin_cert_pem`].
    pub fn admin_key_pem(&self) -> &str {
        &self.admin.key_pem
    }

    /// The TLS configuration of the API server: it presents the serving certificate, offers
    /// HTTP/2 and HTTP/1.1, and asks for a client certificate signed by the CA without requiring
    /// one, so that bearer-token and anonymous clients still connect. A certificate that is
    /// presented but does not verify fails the handshake.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, PkiError> {
        // Named explicitly rather than taken from the process default, which panics when more than
        // one provider is compiled in.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).map_err(|source| PkiError::ServerConfig { source })?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|source| PkiError::ClientVerifier { source })?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| PkiError::ServerConfig { source })?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![self.serving.cert_der.clone()],
                PrivateKeyDer::Pkcs8(self.serving.key_der.clone_key()),
            )
            .map_err(|source| PkiError::ServerConfig { source })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Issues a client certificate for user `common_name` in the group named by at most one
    /// organization, valid for one year, and returns `(cert_pem, key_pem)`. Nothing is written to
    /// disk.
    ///
    /// A subject with two organizations is refused rather than silently cut to one: rcgen keeps
    /// one value per attribute type (rcgen issue #81). Kubernetes' own client certificates
    /// (`system:nodes`, `system:masters`) need only one.
    pub fn issue_client_cert(&self, common_name: &str, organizations: &[&str]) -> Result<(String, String), PkiError> {
        let (cert_pem, key) = sign_client(&self.issuer, common_name, organizations)?;
        Ok((cert_pem, key.serialize_pem()))
    }

    /// Issues a node agent's serving certificate for `node_name` and `ips` (server auth, valid for
    /// one year) and returns `(chain_pem, key_pem)`: the certificate followed by the CA. The API
    /// server reaches node agents by address, so every address it may use must be listed.
    pub fn issue_kubelet_serving_cert(&self, node_name: &str, ips: &[IpAddr]) -> Result<(String, String), PkiError> {
        let generate = |source| PkiError::Generate { common_name: node_name.to_owned(), source };
        // The subject a kubelet's serving certificate request carries upstream.
        let subject = format!("system:node:{node_name}");
        let mut params = leaf_params(&subject, &["system:nodes"], ExtendedKeyUsagePurpose::ServerAuth);
        params.subject_alt_names.push(SanType::DnsName(node_name.to_owned().try_into().map_err(generate)?));
        params.subject_alt_names.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;
        Ok((format!("{}{}", cert.pem(), self.ca_pem), key.serialize_pem()))
    }

    /// The TLS configuration the API server connects to node agents with: it trusts only the
    /// cluster CA, verifies the agent's certificate against the address it dials (IP or name),
    /// and presents the `kube-apiserver-kubelet-client` certificate. HTTP/1.1 only, because the
    /// streaming subresources upgrade the connection.
    pub fn kubelet_client_config(&self) -> Result<rustls::ClientConfig, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).map_err(|source| PkiError::ClientConfig { source })?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| PkiError::ClientConfig { source })?
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![self.kubelet_client.cert_der.clone()],
                PrivateKeyDer::Pkcs8(self.kubelet_client.key_der.clone_key()),
            )
            .map_err(|source| PkiError::ClientConfig { source })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// Writes a kubeconfig that connects to `server_url` as `system:admin`.
    pub fn write_admin_kubeconfig(&self, path: &Path, server_url: &str) -> Result<(), PkiError> {
        write_kubeconfig(path, server_url, &self.ca_pem, &self.admin.cert_pem, &self.admin.key_pem)
    }
}

/// Writes a kubeconfig with one cluster, user and context, all named `default` as k3s names
/// them, with the CA and client credentials embedded; the file gets mode 0600 because it holds a
/// private key.
pub fn write_kubeconfig(
    path: &Path,
    server_url: &str,
    ca_pem: &str,
    client_cert_pem: &str,
    client_key_pem: &str,
) -> Result<(), PkiError> {
    let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "default",
            "cluster": {
                "certificate-authority-data": b64(ca_pem),
                "server": server_url,
            },
        }],
        "users": [{
            "name": "default",
            "user": {
                "client-certificate-data": b64(client_cert_pem),
                "client-key-data": b64(client_key_pem),
            },
        }],
        "contexts": [{
            "name": "default",
            "context": { "cluster": "default", "user": "default" },
        }],
        "current-context": "default",
        "preferences": {},
    });
    let yaml = serde_yaml::to_string(&config)
        .map_err(|source| PkiError::EncodeKubeconfig { path: path.to_owned(), source })?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|source| PkiError::CreateDir { path: parent.to_owned(), source })?;
    }
    write_file(path, yaml.as_bytes(), KEY_MODE)
}

fn load_or_create_ca(tls_dir: &Path) -> Result<(String, CertificateDer<'static>, Issuer<'static, KeyPair>), PkiError> {
    let cert_path = tls_dir.join(CA_CERT);
    let key_path = tls_dir.join(CA_KEY);
    let cert = read_if_exists(&cert_path)?;
    let key = match fs::read(&key_path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(PkiError::ReadCaKey { path: key_path, source });
        }
    };
    match (cert, key) {
        (None, None) => create_ca(tls_dir),
        (Some(_), None) => Err(PkiError::CaKeyMissing { cert: cert_path, key: key_path }),
        (None, Some(_)) => Err(PkiError::CaCertMissing { cert: cert_path, key: key_path }),
        (Some(cert), Some(key)) => {
            let key = parse_key(&key_path, &key)?;
            let cert_der = pem_to_der(&cert_path, &cert)?;
            let parsed = parse_der(&cert_path, &cert_der)?;
            if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
                return Err(PkiError::CaKeyMismatch { cert: cert_path, key: key_path });
            }
            let issuer = Issuer::from_ca_cert_der(&cert_der, key)
                .map_err(|source| PkiError::CaIssuer { path: cert_path.clone(), source })?;
            Ok((String::from_utf8_lossy(&cert).into_owned(), cert_der, issuer))
        }
    }
}

fn create_ca(tls_dir: &Path) -> Result<(String, CertificateDer<'static>, Issuer<'static, KeyPair>), PkiError> {
    let common_name = format!("tugboat-ca@{}", unix_now().as_secs());
    let generate = |source| PkiError::Generate { common_name: common_name.clone(), source };
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(&common_name, &[]);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, CA_VALIDITY);
    let cert = params.self_signed(&key).map_err(generate)?;
    // The key goes first: a crash between the two writes then leaves a key without a certificate,
    // which is reported, rather than a certificate whose key is lost for good.
    write_file(&tls_dir.join(CA_KEY), key.serialize_pem().as_bytes(), KEY_MODE)?;
    write_file(&tls_dir.join(CA_CERT), cert.pem().as_bytes(), CERT_MODE)?;
    tracing::info!(common_name, "created the cluster ca");
    Ok((cert.pem(), cert.der().clone(), Issuer::new(params, key)))
}

/// What a leaf certificate's files on disk are good for.
enum Stored {
    Reusable(Leaf),
    /// Why not: the certificate is then re-issued.
    Unusable(&'static str),
}

/// Loads a leaf certificate and key. Files that cannot be reused are `Ok(Stored::Unusable)`; an
/// `Err` is an I/O failure that re-issuing would not fix.
fn load_leaf(tls_dir: &Path, cert_name: &str, key_name: &str, ca_der: &[u8]) -> Result<Stored, PkiError> {
    let cert_path = tls_dir.join(cert_name);
    let key_path = tls_dir.join(key_name);
    let (Some(cert), Some(key)) = (read_if_exists(&cert_path)?, read_if_exists(&key_path)?) else {
        return Ok(Stored::Unusable("certificate or key missing"));
    };
    let Ok(key) = parse_key(&key_path, &key) else {
        return Ok(Stored::Unusable("key unreadable"));
    };
    let Ok(cert_der) = pem_to_der(&cert_path, &cert) else {
        return Ok(Stored::Unusable("certificate unreadable"));
    };
    let Ok(parsed) = parse_der(&cert_path, &cert_der) else {
        return Ok(Stored::Unusable("certificate unreadable"));
    };
    let Ok(ca) = parse_der(&tls_dir.join(CA_CERT), ca_der) else {
        return Ok(Stored::Unusable("ca unreadable"));
    };
    if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
        return Ok(Stored::Unusable("key does not match certificate"));
    }
    if parsed.issuer().as_raw() != ca.subject().as_raw() || parsed.verify_signature(Some(ca.public_key())).is_err() {
        return Ok(Stored::Unusable("not issued by the current ca"));
    }
    let expires = Duration::from_secs(u64::try_from(parsed.validity().not_after.timestamp()).unwrap_or(0));
    if expires.saturating_sub(unix_now()) < RENEW_BEFORE {
        return Ok(Stored::Unusable("expires within 90 days"));
    }
    Ok(Stored::Reusable(Leaf {
        cert_pem: String::from_utf8_lossy(&cert).into_owned(),
        cert_der,
        key_pem: key.serialize_pem(),
        key_der: PrivatePkcs8KeyDer::from(key.serialize_der()),
    }))
}

/// The requested names the serving certificate lacks, listed for the log, or `None` when it has
/// them all.
fn missing_sans(cert_path: &Path, leaf: &Leaf, opts: &PkiOptions) -> Result<Option<String>, PkiError> {
    let parsed = parse_der(cert_path, &leaf.cert_der)?;
    let mut ips = BTreeSet::new();
    let mut names = BTreeSet::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => {
                    names.insert(dns.to_ascii_lowercase());
                }
                GeneralName::IPAddress(bytes) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                        ips.insert(IpAddr::from(v4));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                        ips.insert(IpAddr::from(v6));
                    }
                }
                _ => {}
            }
        }
    }
    let missing: Vec<String> = opts
        .ip_sans
        .iter()
        .filter(|ip| !ips.contains(ip))
        .map(ToString::to_string)
        .chain(opts.dns_sans.iter().filter(|dns| !names.contains(&dns.to_ascii_lowercase())).cloned())
        .collect();
    Ok((!missing.is_empty()).then(|| missing.join(",")))
}

fn issue_serving(tls_dir: &Path, issuer: &Issuer<'_, KeyPair>, opts: &PkiOptions) -> Result<Leaf, PkiError> {
    let generate = |source| PkiError::Generate { common_name: SERVING_CN.to_owned(), source };
    let mut params = leaf_params(SERVING_CN, &[], ExtendedKeyUsagePurpose::ServerAuth);
    params.subject_alt_names = opts.ip_sans.iter().map(|ip| SanType::IpAddress(*ip)).collect();
    for dns in &opts.dns_sans {
        let name = dns.clone().try_into().map_err(generate)?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate)?;
    let cert = params.signed_by(&key, issuer).map_err(generate)?;
    write_leaf(tls_dir, SERVING_CERT, SERVING_KEY, cert.pem(), &key)
}

fn sign_client(
    issuer: &Issuer<'_, KeyPair>,
    common_name: &str,
    organizations: &[&str],
) -> Result<(String, KeyPair), PkiError> {
    if organizations.len() > 1 {
        return Err(PkiError::TooManyOrganizations { common_name: common_name.to_owned(), count: organizations.len() });
    }
    let generate = |source| PkiError::Generate { common_name: common_name.to_owned(), source };
    let params = leaf_params(common_name, organizations, ExtendedKeyUsagePurpose::ClientAuth);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate)?;
    let cert = params.signed_by(&key, issuer).map_err(generate)?;
    Ok((cert.pem(), key))
}

fn leaf_params(common_name: &str, organizations: &[&str], usage: ExtendedKeyUsagePurpose) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(common_name, organizations);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    // Lets verifiers pick the right CA certificate when the CA is rotated side by side.
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, LEAF_VALIDITY);
    params
}

fn distinguished_name(common_name: &str, organizations: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for org in organizations {
        dn.push(DnType::OrganizationName, *org);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

fn write_leaf(
    tls_dir: &Path,
    cert_name: &str,
    key_name: &str,
    cert_pem: String,
    key: &KeyPair,
) -> Result<Leaf, PkiError> {
    let key_pem = key.serialize_pem();
    write_file(&tls_dir.join(key_name), key_pem.as_bytes(), KEY_MODE)?;
    write_file(&tls_dir.join(cert_name), cert_pem.as_bytes(), CERT_MODE)?;
    let cert_der = pem_to_der(&tls_dir.join(cert_name), cert_pem.as_bytes())?;
    Ok(Leaf { cert_pem, cert_der, key_pem, key_der: PrivatePkcs8KeyDer::from(key.serialize_der()) })
}

fn set_validity(params: &mut CertificateParams, lifetime: Duration) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let now = unix_now();
    params.not_before = epoch + now.saturating_sub(BACKDATE);
    params.not_after = epoch + now + lifetime;
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, PkiError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Read { path: path.to_owned(), source }),
    }
}

fn parse_key(path: &Path, pem: &[u8]) -> Result<KeyPair, PkiError> {
    KeyPair::from_pem(&String::from_utf8_lossy(pem))
        .map_err(|source| PkiError::ParseKey { path: path.to_owned(), source })
}

fn pem_to_der(path: &Path, pem: &[u8]) -> Result<CertificateDer<'static>, PkiError> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|source| PkiError::ParsePem { path: path.to_owned(), source })?;
    Ok(CertificateDer::from(pem.contents))
}

fn parse_der<'a>(path: &Path, der: &'a [u8]) -> Result<X509Certificate<'a>, PkiError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert)
        .map_err(|source| PkiError::ParseCert { path: path.to_owned(), source })
}

/// Replaces `path` through a temporary file and a rename, so that a crash never leaves a
/// truncated key or certificate behind.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let write_err = |source| PkiError::Write { path: path.to_owned(), source };
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let mut file =
        fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(write_err)?;
    // `mode` only applies when the file is created; a temporary file left by a crash keeps its
    // old permissions unless they are set again.
    file.set_permissions(fs::Permissions::from_mode(mode)).map_err(write_err)?;
    file.write_all(contents).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    fs::rename(&tmp, path).map_err(write_err)
}

#[cfg(test)]
mod tests;
