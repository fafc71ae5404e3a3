//! `tug agent`: a host joins a cluster as a node, with kubelet TLS bootstrapping.
//!
//! The agent learns the cluster CA from the `kube-public/cluster-info` ConfigMap (fetched with
//! the bootstrap token, before it can verify the server) and checks it against the hash in the
//! token (k3s's `K10<sha256 of the CA>::<secret>` format) or the `--ca-cert` file. It then asks
//! for its client certificate (`system:node:<name>` in `system:nodes`) and its serving
//! certificate through the certificates.k8s.io API, as upstream's kubelet does, keeps both under
//! `DATA_DIR/agent/pki/` so that a restart reuses them, and runs the node agent.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::Args;
use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use rcgen::{CertificateParams, DnType, KeyPair, SanType};
use sha2::Digest as _;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Flags of `tug agent`; names as k3s's.
#[derive(Args, Debug)]
pub struct JoinArgs {
    /// The API server to join: `https://HOST:PORT`.
    #[arg(long, env = "TUG_URL")]
    pub server: String,

    /// The server's node token: its `DATA_DIR/node-token` (`K10<ca hash>::<secret>`, the CA is
    /// checked against the hash) or the plain `--token` secret (then `--ca-cert` is required).
    #[arg(long, env = "TUG_TOKEN", hide_env_values = true)]
    pub token: String,

    /// Directory holding the agent's certificates, images and containers.
    #[arg(long, short = 'd', default_value = "/var/lib/tugboat", env = "TUG_DATA_DIR")]
    pub data_dir: PathBuf,

    /// The cluster CA certificate (PEM) to trust, when the token carries no CA hash.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,

    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,

    #[command(flatten)]
    pub agent: crate::agent::AgentArgs,
}

/// The signers and usages upstream's kubelet requests.
const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// How long the agent waits for a request to be approved and issued.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(120);
/// A stored certificate closer than this to its end is requested again.
const RENEW_BEFORE: Duration = Duration::from_secs(24 * 60 * 60);

const CLIENT_CERT: &str = "kubelet-client.crt";
const CLIENT_KEY: &str = "kubelet-client.key";
const SERVING_CERT: &str = "kubelet-serving.crt";
const SERVING_KEY: &str = "kubelet-serving.key";

/// A parsed `--token`.
#[derive(Debug, PartialEq, Eq)]
struct Token {
    secret: String,
    ca_hash: Option<String>,
}

fn parse_token(token: &str) -> anyhow::Result<Token> {
    let token = token.trim();
    if let Some(rest) = token.strip_prefix("K10")
        && let Some((hash, secret)) = rest.split_once("::")
    {
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("the token's CA hash is not a sha256 hex digest; pass the server's DATA_DIR/node-token as it is");
        }
        if secret.is_empty() {
            bail!("the token has a CA hash but no secret after '::'");
        }
        return Ok(Token { secret: secret.to_owned(), ca_hash: Some(hash.to_ascii_lowercase()) });
    }
    if token.is_empty() {
        bail!("the token is empty");
    }
    Ok(Token { secret: token.to_owned(), ca_hash: None })
}

/// The hash k3s puts in its secure tokens: sha256 of the CA certificate PEM, in hex.
pub fn ca_hash(ca_pem: &str) -> String {
    sha2::Sha256::digest(ca_pem.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The token `tug server --token T` writes to DATA_DIR/node-token for joining nodes.
pub fn node_token(ca_pem: &str, secret: &str) -> String {
    format!("K10{}::{secret}", ca_hash(ca_pem))
}

pub async fn run(args: JoinArgs) -> anyhow::Result<()> {
    let token = parse_token(&args.token)?;
    let pinned_ca = match (&token.ca_hash, &args.ca_cert) {
        (_, Some(path)) => {
            Some(std::fs::read_to_string(path).with_context(|| format!("reading --ca-cert {}", path.display()))?)
        }
        (Some(_), None) => None,
        (None, None) => bail!(
            "the token carries no CA hash, so the server cannot be verified: pass the server's DATA_DIR/node-token \
             (K10<hash>::<secret>) as --token, or the cluster CA with --ca-cert"
        ),
    };
    let server_url: http::Uri =
        args.server.parse().with_context(|| format!("--server {:?} is not a URL", args.server))?;
    let node_name = crate::agent::node_name(&args.agent);
    let node_ip = args.agent.node_ip.or_else(primary_address).unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));

    let ca_pem = fetch_ca(&server_url, &token).await?;
    if let Some(hash) = &token.ca_hash
        && ca_hash(&ca_pem) != *hash
    {
        bail!("the cluster CA served by {} does not match the token's CA hash: refusing to join", args.server);
    }
    if let Some(pinned) = &pinned_ca
        && pinned.trim() != ca_pem.trim()
    {
        bail!("the cluster CA served by {} is not the one in --ca-cert: refusing to join", args.server);
    }

    let agent_dir = args.data_dir.join("agent");
    let pki_dir = agent_dir.join("pki");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&pki_dir)
        .with_context(|| format!("creating {}", pki_dir.display()))?;
    let kubeconfig = agent_dir.join("kubelet.kubeconfig");
    let bootstrap = bootstrap_client(&server_url, &token.secret, Some(&ca_pem))?;

    // The client identity: reused while valid, else requested with the bootstrap token.
    let user = format!("system:node:{node_name}");
    let (client_cert, client_key) = match load_valid(&pki_dir, CLIENT_CERT, CLIENT_KEY, &user, &ca_pem, None)? {
        Some(pair) => {
            info!(node = %node_name, "reusing the node's client certificate");
            pair
        }
        None => {
            info!(node = %node_name, "requesting a client certificate");
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating a key")?;
            let request = request_pem(&user, &[], &key)?;
            let usages = ["digital signature", "client auth"];
            let cert = request_certificate(&bootstrap, CLIENT_SIGNER, &request, &usages).await?;
            write_private(&pki_dir.join(CLIENT_KEY), &key.serialize_pem())?;
            write_private(&pki_dir.join(CLIENT_CERT), &cert)?;
            (cert, key.serialize_pem())
        }
    };
    tug_apiserver::pki::write_kubeconfig(&kubeconfig, &args.server, &ca_pem, &client_cert, &client_key)
        .context("writing the node's kubeconfig")?;
    let client = crate::client_from_kubeconfig(&kubeconfig).await?;

    // The serving certificate, requested as the node itself; it must name the address the API
    // server dials.
    let mut ips = vec![node_ip];
    if !ips.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)) {
        ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let (serving_cert, serving_key) = match load_valid(&pki_dir, SERVING_CERT, SERVING_KEY, &user, &ca_pem, Some(&ips))?
    {
        Some(pair) => pair,
        None => {
            info!(node = %node_name, "requesting a serving certificate");
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating a key")?;
            let mut sans = vec![SanType::DnsName(node_name.clone().try_into().context("the node name as a DNS name")?)];
            sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
            let request = request_pem(&user, &sans, &key)?;
            let usages = ["digital signature", "server auth"];
            let cert = request_certificate(&client, SERVING_SIGNER, &request, &usages).await?;
            write_private(&pki_dir.join(SERVING_KEY), &key.serialize_pem())?;
            write_private(&pki_dir.join(SERVING_CERT), &cert)?;
            (cert, key.serialize_pem())
        }
    };

    let identity = crate::agent::AgentIdentity {
        node_ip,
        serving_cert_pem: format!("{}\n{ca_pem}", serving_cert.trim_end()),
        serving_key_pem: serving_key,
        client_ca_pem: ca_pem,
    };
    let shutdown = CancellationToken::new();
    let agent =
        crate::agent::spawn(client, &args.agent, &args.data_dir, &args.cluster_domain, identity, shutdown.clone())
            .await?;
    info!(node = %node_name, server = %args.server, "joined the cluster");
    crate::server::wait_for_signal().await;
    info!("shutting down; containers keep running");
    shutdown.cancel();
    let _ = agent.await;
    Ok(())
}

fn primary_address() -> Option<IpAddr> {
    let sock = UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect("192.0.2.1:9").ok()?;
    sock.local_addr().ok().map(|a| a.ip()).filter(|ip| !ip.is_unspecified())
}

/// A client authenticating with the bootstrap token; without `ca_pem` it does not verify the
/// server (only to read the public cluster-info, which is then checked against the token).
fn bootstrap_client(url: &http::Uri, secret: &str, ca_pem: Option<&str>) -> anyhow::Result<kube::Client> {
    let mut config = kube::Config::new(url.clone());
    config.auth_info.token = Some(secret.to_owned().into());
    config.read_timeout = Some(Duration::from_secs(30));
    match ca_pem {
        Some(pem) => {
            let ders = rustls_pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<rustls_pki_types::CertificateDer<'static>>, _>>()
                .context("reading the cluster CA")?;
            config.root_cert = Some(ders.into_iter().map(|d| d.to_vec()).collect());
        }
        None => config.accept_invalid_certs = true,
    }
    kube::Client::try_from(config).context("building the bootstrap client")
}

/// The CA published in `kube-public/cluster-info`.
async fn fetch_ca(url: &http::Uri, token: &Token) -> anyhow::Result<String> {
    let client = bootstrap_client(url, &token.secret, None)?;
    let api: Api<ConfigMap> = Api::namespaced(client, "kube-public");
    let cm = match api.get("cluster-info").await {
        Ok(cm) => cm,
        Err(kube::Error::Api(status)) if status.code == 401 => {
            bail!("the server at {url} refused the token (401 Unauthorized): check --token")
        }
        Err(e) => return Err(e).with_context(|| format!("reading kube-public/cluster-info from {url}")),
    };
    let kubeconfig = cm.data.and_then(|d| d.get("kubeconfig").cloned()).context("cluster-info has no kubeconfig")?;
    let kubeconfig: kube::config::Kubeconfig =
        serde_yaml::from_str(&kubeconfig).context("cluster-info's kubeconfig is not a kubeconfig")?;
    let data = kubeconfig
        .clusters
        .iter()
        .find_map(|c| c.cluster.as_ref().and_then(|c| c.certificate_authority_data.clone()))
        .context("cluster-info's kubeconfig has no certificate-authority-data")?;
    let pem = base64::engine::general_purpose::STANDARD.decode(data.trim()).context("decoding the cluster CA")?;
    String::from_utf8(pem).context("the cluster CA is not PEM text")
}

/// A PEM certificate request for `user` in `system:nodes`, with `sans`.
fn request_pem(user: &str, sans: &[SanType], key: &KeyPair) -> anyhow::Result<String> {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::OrganizationName, "system:nodes");
    params.distinguished_name.push(DnType::CommonName, user);
    params.subject_alt_names = sans.to_vec();
    let csr = params.serialize_request(key).context("creating the certificate request")?;
    csr.pem().context("encoding the certificate request")
}

/// Creates a CSR object and waits until it is issued; returns the certificate (PEM).
async fn request_certificate(
    client: &kube::Client,
    signer: &str,
    request: &str,
    usages: &[&str],
) -> anyhow::Result<String> {
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta { generate_name: Some("node-csr-".into()), ..Default::default() },
        spec: CertificateSigningRequestSpec {
            signer_name: signer.into(),
            request: ByteString(request.as_bytes().to_vec()),
            usages: Some(usages.iter().map(|u| (*u).to_owned()).collect()),
            ..Default::default()
        },
        status: None,
    };
    let created = match api.create(&PostParams::default(), &csr).await {
        Ok(c) => c,
        Err(kube::Error::Api(status)) if status.code == 401 => {
            bail!("the server refused the token (401 Unauthorized): check --token")
        }
        Err(e) => return Err(e).context("creating the certificate signing request"),
    };
    let name = created.metadata.name.clone().unwrap_or_default();
    info!(csr = %name, signer, "waiting for the certificate signing request to be approved and issued");
    let wait = async {
        let mut objects = std::pin::pin!(watcher::watch_object(api.clone(), &name));
        while let Some(event) = objects.next().await {
            let Some(csr) = event.context("watching the certificate signing request")? else {
                bail!("certificate signing request {name} was deleted before it was issued");
            };
            let status = csr.status.unwrap_or_default();
            for c in status.conditions.iter().flatten() {
                if (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True" {
                    bail!(
                        "certificate signing request {name} was {}: {}",
                        c.type_.to_lowercase(),
                        c.message.clone().unwrap_or_default()
                    );
                }
            }
            if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
                return String::from_utf8(cert.0).context("the issued certificate is not PEM text");
            }
        }
        bail!("the watch of certificate signing request {name} ended")
    };
    tokio::time::timeout(ISSUE_TIMEOUT, wait).await.with_context(|| {
        format!(
            "certificate signing request {name} was not issued within {}s; is it approved?",
            ISSUE_TIMEOUT.as_secs()
        )
    })?
}

/// The stored certificate and key if they exist, name `user`, were issued by the cluster's CA
/// (a data directory reused for another cluster re-bootstraps), cover `ips` (when given), match
/// each other, and are not about to expire.
fn load_valid(
    dir: &Path,
    cert_file: &str,
    key_file: &str,
    user: &str,
    ca_pem: &str,
    ips: Option<&[IpAddr]>,
) -> anyhow::Result<Option<(String, String)>> {
    let (Ok(cert_pem), Ok(key_pem)) =
        (std::fs::read_to_string(dir.join(cert_file)), std::fs::read_to_string(dir.join(key_file)))
    else {
        return Ok(None);
    };
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) else { return Ok(None) };
    let Ok(cert) = pem.parse_x509() else { return Ok(None) };
    let Ok(key) = KeyPair::from_pem(&key_pem) else { return Ok(None) };
    let Ok((_, ca)) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes()) else { return Ok(None) };
    let Ok(ca) = ca.parse_x509() else { return Ok(None) };
    if cert.verify_signature(Some(ca.public_key())).is_err() {
        return Ok(None);
    }
    if cert.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key).as_slice() {
        return Ok(None);
    }
    let cn_matches = cert.subject().iter_common_name().any(|a| a.as_str() == Ok(user));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let fresh = cert.validity().not_after.timestamp() > now + RENEW_BEFORE.as_secs() as i64;
    let covers = ips.is_none_or(|ips| {
        let names = cert.subject_alternative_name().ok().flatten();
        ips.iter().all(|ip| {
            names.as_ref().is_some_and(|n| {
                n.value.general_names.iter().any(|g| match (g, ip) {
                    (x509_parser::extensions::GeneralName::IPAddress(b), IpAddr::V4(v4)) => *b == v4.octets(),
                    (x509_parser::extensions::GeneralName::IPAddress(b), IpAddr::V6(v6)) => *b == v6.octets(),
                    _ => false,
                })
            })
        })
    });
    Ok((cn_matches && fresh && covers).then_some((cert_pem, key_pem)))
}

/// Writes a file readable only by its owner (it is a key or an identity).
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(contents.as_bytes()).with_context(|| format!("writing {}", tmp.display()))?;
    file.sync_all().ok();
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_tokens_carry_the_ca_hash_and_plain_tokens_do_not() {
        let token = node_token("CA", "s3cret:x");
        assert_eq!(parse_token(&token).unwrap(), Token { secret: "s3cret:x".into(), ca_hash: Some(ca_hash("CA")) });
        assert_eq!(parse_token("plain").unwrap(), Token { secret: "plain".into(), ca_hash: None });
        assert!(parse_token("K10abc::x").is_err());
        assert!(parse_token("").is_err());
    }
}
