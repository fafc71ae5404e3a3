//! Request authentication: turning a verified client certificate or a bearer token into the user
//! that authorization then judges, as upstream's x509 and static token file authenticators do.
//!
//! Bearer tokens are secrets. They are never logged, never put in errors, and not even kept in
//! memory: a [`TokenFile`] holds only a keyed MAC of each token, compared in constant time.

use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use ring::hmac;
use ring::rand::{SecureRandom as _, SystemRandom};

/// Added to every authenticated user, as upstream's authenticator chain does.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";
/// The user and group of the admin token [`TokenFile::ensure`] generates.
pub const ADMIN_TOKEN_USER: &str = "admin";
pub const ADMIN_TOKEN_GROUP: &str = "system:masters";
/// The user and group of the server's `--token`, which joining nodes present before they have a
/// certificate of their own (kubeadm's and k3s's bootstrap token convention).
pub const BOOTSTRAP_TOKEN_USER: &str = "node-bootstrap";
pub const BOOTSTRAP_TOKEN_GROUP: &str = "system:bootstrappers";

/// Who is making a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
    pub uid: Option<String>,
}

impl UserInfo {
    fn authenticated(name: String, uid: Option<String>, mut groups: Vec<String>) -> Self {
        if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
            groups.push(AUTHENTICATED_GROUP.to_owned());
        }
        Self { name, groups, uid }
    }
}

/// The user a client certificate names: the subject's common name is the user and each
/// organization a group. `None` when the certificate cannot be parsed or has no common name.
///
/// This does not verify anything: pass only a certificate that the TLS handshake verified against
/// the cluster CA (the first of rustls' `peer_certificates()`).
pub fn identity_from_client_cert(der: &[u8]) -> Option<UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = cert.subject().iter_common_name().next()?.as_str().ok()?;
    if name.is_empty() {
        return None;
    }
    let groups = cert
        .subject()
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect();
    Some(UserInfo::authenticated(name.to_owned(), None, groups))
}

/// The token of an `Authorization: Bearer <token>` header value, read as upstream reads it: the
/// scheme is case-insensitive, the token runs from the first space to the next one, and an empty
/// token (as in `Bearer  x`, with two spaces) is no token.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let mut parts = authorization.trim().splitn(3, ' ');
    let scheme = parts.next()?;
    let token = parts.next()?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Errors of reading and writing a static token file. None of them contains a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("reading token file {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing token file {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error("token file {path} line {line}: expected at least 3 columns (token, user name, user uid), found {found}")]
    TooFewColumns { path: PathBuf, line: usize, found: usize },
    #[error("token file {path} line {line}: quoted field is not closed")]
    UnterminatedQuote { path: PathBuf, line: usize },
    #[error("token file {path} line {line}: quote inside an unquoted field")]
    BareQuote { path: PathBuf, line: usize },
    #[error("token file {path} line {line}: text after the closing quote of a field")]
    TextAfterQuote { path: PathBuf, line: usize },
    #[error(
        "the bootstrap token cannot be written to {path}: it is empty or contains a comma, quote, space or line break"
    )]
    UnwritableToken { path: PathBuf },
    // ring's error carries no detail, so there is nothing to keep as a source.
    #[error("the system random number generator failed")]
    Random,
}

struct TokenEntry {
    mac: hmac::Tag,
    user: UserInfo,
}

/// Users authenticated by static bearer tokens, read from upstream's `--token-auth-file` format:
/// one `token,user,uid[,"group1,group2"]` record per line.
pub struct TokenFile {
    path: PathBuf,
    /// Random per load, so that the MACs held in memory say nothing about the tokens.
    key: hmac::Key,
    entries: Vec<TokenEntry>,
}

impl fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let users: Vec<&str> = self.entries.iter().map(|e| e.user.name.as_str()).collect();
        f.debug_struct("TokenFile")
            .field("path", &self.path)
            .field("users", &users)
            .field("tokens", &"<redacted>")
            .finish()
    }
}

impl TokenFile {
    /// Reads a token file. Blank lines and records with an empty token are skipped; when a token
    /// appears twice the later record wins, as upstream.
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let text = fs::read_to_string(path).map_err(|source| TokenFileError::Read { path: path.to_owned(), source })?;
        Self::parse(path, &text)
    }

    /// Makes sure the token file exists and admits `token`, then loads it.
    ///
    /// A missing file is created with mode 0600 and one random token for user `admin` in group
    /// `system:masters`. When `token` is given (the server's `--token`, presented by nodes that
    /// join) and no record has it, a record for user `node-bootstrap` in group
    /// `system:bootstrappers` is appended. An existing file is otherwise left alone.
    pub fn ensure(path: &Path, token: Option<&str>) -> Result<Self, TokenFileError> {
        if let Some(token) = token
            && (token.is_empty() || token.contains([',', '"', ' ', '\n', '\r']))
        {
            return Err(TokenFileError::UnwritableToken { path: path.to_owned() });
        }
        let write_err = |source| TokenFileError::Write { path: path.to_owned(), source };

        if !path.exists() {
            let mut text = record(&random_token()?, ADMIN_TOKEN_USER, ADMIN_TOKEN_GROUP);
            if let Some(token) = token {
                text.push_str(&record(token, BOOTSTRAP_TOKEN_USER, BOOTSTRAP_TOKEN_GROUP));
            }
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).map_err(write_err)?;
            }
            // create_new: when two servers start on the same data dir, the one that loses the race
            // uses the winner's file instead of overwriting tokens already handed out.
            match fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
                Ok(mut file) => {
                    file.write_all(text.as_bytes()).map_err(write_err)?;
                    file.sync_all().map_err(write_err)?;
                    tracing::info!(path = %path.display(), "created the token file with an admin token");
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => return Err(write_err(source)),
            }
        }

        let file = Self::load(path)?;
        let Some(token) = token else {
            return Ok(file);
        };
        if file.authenticate_bearer(token).is_some() {
            return Ok(file);
        }
        let mut text =
            fs::read_to_string(path).map_err(|source| TokenFileError::Read { path: path.to_owned(), source })?;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&record(token, BOOTSTRAP_TOKEN_USER, BOOTSTRAP_TOKEN_GROUP));
        replace_file(path, text.as_bytes()).map_err(write_err)?;
        tracing::info!(path = %path.display(), "added the node bootstrap token to the token file");
        Self::parse(path, &text)
    }

    /// The user `token` belongs to, if any. Every record is compared, in constant time, whatever
    /// matches, so the time taken says nothing about which record or how much of it matched.
    pub fn authenticate_bearer(&self, token: &str) -> Option<UserInfo> {
        if token.is_empty() {
            return None;
        }
        let mut found = None;
        for entry in &self.entries {
            if hmac::verify(&self.key, token.as_bytes(), entry.mac.as_ref()).is_ok() {
                found = Some(entry);
            }
        }
        found.map(|e| e.user.clone())
    }

    fn parse(path: &Path, text: &str) -> Result<Self, TokenFileError> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new()).map_err(|_| TokenFileError::Random)?;
        let mut entries: Vec<TokenEntry> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            if raw.is_empty() {
                continue;
            }
            let fields = split_record(raw).map_err(|e| e.at(path, line))?;
            if fields.len() < 3 {
                return Err(TokenFileError::TooFewColumns { path: path.to_owned(), line, found: fields.len() });
            }
            let mut fields = fields.into_iter();
            let (token, name, uid) = (
                fields.next().unwrap_or_default(),
                fields.next().unwrap_or_default(),
                fields.next().unwrap_or_default(),
            );
            if token.is_empty() {
                tracing::warn!(path = %path.display(), line, "skipping a record with an empty token");
                continue;
            }
            let groups = fields
                .next()
                .map(|g| g.split(',').filter(|g| !g.is_empty()).map(str::to_owned).collect())
                .unwrap_or_default();
            let mac = hmac::sign(&key, token.as_bytes());
            if entries.iter().any(|e| hmac::verify(&key, token.as_bytes(), e.mac.as_ref()).is_ok()) {
                tracing::warn!(path = %path.display(), line, "a token appears twice; the later record wins");
            }
            let uid = (!uid.is_empty()).then_some(uid);
            entries.push(TokenEntry { mac, user: UserInfo::authenticated(name, uid, groups) });
        }
        Ok(Self { path: path.to_owned(), key, entries })
    }
}

/// A record for a token file. The uid repeats the user name, as k3s's generated files do.
fn record(token: &str, user: &str, group: &str) -> String {
    format!("{token},{user},{user},\"{group}\"\n")
}

/// 128 random bits, hex-encoded so the token is safe in CSV, headers and shells.
fn random_token() -> Result<String, TokenFileError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).map_err(|_| TokenFileError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

enum QuoteError {
    Unterminated,
    InsideUnquotedField,
    TextAfterClosing,
}

impl QuoteError {
    fn at(self, path: &Path, line: usize) -> TokenFileError {
        let path = path.to_owned();
        match self {
            Self::Unterminated => TokenFileError::UnterminatedQuote { path, line },
            Self::InsideUnquotedField => TokenFileError::BareQuote { path, line },
            Self::TextAfterClosing => TokenFileError::TextAfterQuote { path, line },
        }
    }
}

/// Splits one CSV line the way Go's `encoding/csv` reads upstream's token file: a field is quoted
/// only when it starts with `"`, and `""` inside it is a literal quote. Unlike Go, a quoted field
/// cannot span lines, so that every error names the line it is on.
fn split_record(line: &str) -> Result<Vec<String>, QuoteError> {
    let mut fields = Vec::new();
    let mut rest = line;
    loop {
        let (field, after) = if let Some(quoted) = rest.strip_prefix('"') {
            let mut field = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next() {
                    None => return Err(QuoteError::Unterminated),
                    Some((i, '"')) => {
                        if quoted[i + 1..].starts_with('"') {
                            field.push('"');
                            chars.next();
                        } else {
                            break i + 1;
                        }
                    }
                    Some((_, c)) => field.push(c),
                }
            };
            let after = &quoted[end..];
            if !(after.is_empty() || after.starts_with(',')) {
                return Err(QuoteError::TextAfterClosing);
            }
            (field, after)
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            let field = &rest[..end];
            if field.contains('"') {
                return Err(QuoteError::InsideUnquotedField);
            }
            (field.to_owned(), &rest[end..])
        };
        fields.push(field);
        match after.strip_prefix(',') {
            Some(next) => rest = next,
            None => return Ok(fields),
        }
    }
}

/// Replaces a file holding secrets through a temporary file and a rename, so that a crash never
/// leaves it half written, keeping it readable only by its owner.
fn replace_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    // `mode` only applies on creation; a temporary file left by a crash may have other bits.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{ClusterPki, PkiOptions};
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn token_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.csv");
        fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn groups(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn token_file_record_maps_to_user_uid_and_quoted_groups() {
        let (_dir, path) =
            token_file("secret-a,alice,uid-1,\"devs,system:masters\"\r\n\nsecret-b,bob,,ops\nsecret-c,carol,uid-3\n");
        let file = TokenFile::load(&path).unwrap();
        assert_eq!(
            file.authenticate_bearer("secret-a"),
            Some(UserInfo {
                name: "alice".into(),
                groups: groups(&["devs", "system:masters", AUTHENTICATED_GROUP]),
                uid: Some("uid-1".into()),
            })
        );
        assert_eq!(
            file.authenticate_bearer("secret-b"),
            Some(UserInfo { name: "bob".into(), groups: groups(&["ops", AUTHENTICATED_GROUP]), uid: None })
        );
        assert_eq!(file.authenticate_bearer("secret-c").unwrap().groups, groups(&[AUTHENTICATED_GROUP]));
    }

    #[test]
    fn unknown_empty_and_prefix_tokens_are_rejected() {
        let (_dir, path) = token_file("secret-a,alice,1\n");
        let file = TokenFile::load(&path).unwrap();
        assert_eq!(file.authenticate_bearer("secret-b"), None);
        assert_eq!(file.authenticate_bearer("secret"), None);
        assert_eq!(file.authenticate_bearer("secret-a "), None);
        assert_eq!(file.authenticate_bearer(""), None);
    }

    #[test]
    fn record_with_too_few_columns_is_reported_with_its_line_number() {
        let (_dir, path) = token_file("t1,alice,1\n\nt2,bob\n");
        let err = TokenFile::load(&path).unwrap_err();
        assert!(matches!(err, TokenFileError::TooFewColumns { line: 3, found: 2, .. }), "{err:?}");
        assert!(err.to_string().contains("line 3"), "{err}");
    }

    #[test]
    fn malformed_quotes_are_reported_with_their_line_number() {
        let cases = [
            ("t1,alice,1,\"devs\n", "unterminated"),
            ("t1,alice,1\nt2,bo\"b,2\n", "bare"),
            ("t1,alice,1\nt2,bob,2\nt3,carol,3,\"a\"b\n", "after"),
        ];
        for (text, kind) in cases {
            let (_dir, path) = token_file(text);
            let err = TokenFile::load(&path).unwrap_err();
            let ok = match kind {
                "unterminated" => matches!(err, TokenFileError::UnterminatedQuote { line: 1, .. }),
                "bare" => matches!(err, TokenFileError::BareQuote { line: 2, .. }),
                _ => matches!(err, TokenFileError::TextAfterQuote { line: 3, .. }),
            };
            assert!(ok, "{text:?}: {err:?}");
        }
    }

    #[test]
    fn doubled_quote_inside_a_quoted_field_is_a_literal_quote() {
        let (_dir, path) = token_file("\"to\"\"ken\",alice,1\n");
        let file = TokenFile::load(&path).unwrap();
        assert_eq!(file.authenticate_bearer("to\"ken").unwrap().name, "alice");
    }

    #[test]
    fn empty_token_records_are_skipped_and_later_duplicates_win() {
        let (_dir, path) = token_file(",nobody,0\ndup,first,1\ndup,second,2\n");
        let file = TokenFile::load(&path).unwrap();
        assert_eq!(file.entries.len(), 2);
        assert_eq!(file.authenticate_bearer("dup").unwrap().name, "second");
    }

    #[test]
    fn errors_and_debug_output_never_show_tokens() {
        let (_dir, path) = token_file("super-secret-token,alice,1\n");
        let file = TokenFile::load(&path).unwrap();
        let shown = format!("{file:?}");
        assert!(!shown.contains("super-secret"), "{shown}");
        assert!(shown.contains("alice"), "{shown}");

        let (_dir, path) = token_file("super-secret-token,alice\n");
        let err = TokenFile::load(&path).unwrap_err();
        assert!(!format!("{err} {err:?}").contains("super-secret"));
    }

    #[test]
    fn ensure_creates_a_private_file_with_an_admin_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server").join("token.csv");
        let file = TokenFile::ensure(&path, None).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        let token = text.split(',').next().unwrap();
        assert_eq!(token.len(), 32);
        let user = file.authenticate_bearer(token).unwrap();
        assert_eq!(user.name, ADMIN_TOKEN_USER);
        assert_eq!(user.groups, groups(&[ADMIN_TOKEN_GROUP, AUTHENTICATED_GROUP]));
    }

    #[test]
    fn ensure_is_idempotent_and_adds_the_bootstrap_token_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.csv");
        TokenFile::ensure(&path, None).unwrap();
        let created = fs::read_to_string(&path).unwrap();
        TokenFile::ensure(&path, None).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), created);

        let file = TokenFile::ensure(&path, Some("K10abc::server:join")).unwrap();
        let with_bootstrap = fs::read_to_string(&path).unwrap();
        assert!(with_bootstrap.starts_with(&created));
        let user = file.authenticate_bearer("K10abc::server:join").unwrap();
        assert_eq!(user.name, BOOTSTRAP_TOKEN_USER);
        assert_eq!(user.groups, groups(&[BOOTSTRAP_TOKEN_GROUP, AUTHENTICATED_GROUP]));

        TokenFile::ensure(&path, Some("K10abc::server:join")).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), with_bootstrap);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn ensure_on_a_new_file_writes_admin_and_bootstrap_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.csv");
        let file = TokenFile::ensure(&path, Some("join-me")).unwrap();
        assert_eq!(file.entries.len(), 2);
        assert_eq!(file.authenticate_bearer("join-me").unwrap().name, BOOTSTRAP_TOKEN_USER);
    }

    #[test]
    fn ensure_refuses_a_token_that_would_break_the_csv() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.csv");
        let err = TokenFile::ensure(&path, Some("a,b")).unwrap_err();
        assert!(matches!(err, TokenFileError::UnwritableToken { .. }), "{err:?}");
        assert!(!path.exists());
    }

    #[test]
    fn bearer_header_yields_its_token() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("  bEaReR abc "), Some("abc"));
        assert_eq!(bearer_token("Bearer abc trailing"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer  abc"), None);
        assert_eq!(bearer_token(""), None);
    }

    fn new_pki() -> (tempfile::TempDir, ClusterPki) {
        let dir = tempfile::tempdir().unwrap();
        let opts = PkiOptions::new(IpAddr::V4(Ipv4Addr::new(10, 43, 0, 1)), "cluster.local");
        let pki = ClusterPki::load_or_create(dir.path(), &opts).unwrap();
        (dir, pki)
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        CertificateDer::from(pem.contents)
    }

    #[test]
    fn client_certificate_names_user_and_groups() {
        let (_dir, pki) = new_pki();
        let (cert, _key) = pki.issue_client_cert("system:node:node-b", &["system:nodes"]).unwrap();
        assert_eq!(
            identity_from_client_cert(&der(&cert)),
            Some(UserInfo {
                name: "system:node:node-b".into(),
                groups: groups(&["system:nodes", AUTHENTICATED_GROUP]),
                uid: None,
            })
        );
        assert_eq!(identity_from_client_cert(b"not a certificate"), None);
    }

    #[test]
    fn every_organization_of_a_client_certificate_is_a_group() {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "devs");
        // rcgen keeps one value per attribute type; the organization OID spelled as a custom type
        // is the only way it writes a second O.
        params.distinguished_name.push(rcgen::DnType::CustomDnType(vec![2, 5, 4, 10]), "ops");
        params.distinguished_name.push(rcgen::DnType::CommonName, "bob");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let user = identity_from_client_cert(cert.der()).unwrap();
        assert_eq!(user.name, "bob");
        assert_eq!(user.groups, groups(&["devs", "ops", AUTHENTICATED_GROUP]));
    }

    #[test]
    fn client_certificate_without_common_name_names_nobody() {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "system:masters");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(identity_from_client_cert(cert.der()), None);
    }

    fn client_config(pki: &ClusterPki, identity: Option<(String, String)>) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(pki.ca_pem())).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(vec![der(&cert)], PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap())
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    /// Runs one TLS handshake over an in-memory pipe, exchanges a byte to prove the connection
    /// works, and returns the identity the server derived from the client's certificate.
    async fn handshake(pki: &ClusterPki, identity: Option<(String, String)>) -> Result<Option<UserInfo>, io::Error> {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_config().unwrap()));
        let connector = tokio_rustls::TlsConnector::from(client_config(pki, identity));
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = async move {
            let mut tls = acceptor.accept(server_io).await?;
            let (_, conn) = tls.get_ref();
            assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
            let user = conn
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| identity_from_client_cert(leaf));
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            tls.write_all(&byte).await?;
            tls.flush().await?;
            Ok::<_, io::Error>(user)
        };
        let client = async move {
            let name = ServerName::try_from("kubernetes.default.svc").unwrap();
            let mut tls = connector.connect(name, client_io).await?;
            tls.write_all(b"x").await?;
            tls.flush().await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            Ok::<_, io::Error>(())
        };
        let (user, sent) = tokio::join!(server, client);
        sent?;
        user
    }

    #[tokio::test]
    async fn tls_client_with_the_admin_certificate_is_the_admin() {
        let (_dir, pki) = new_pki();
        let admin = (pki.admin_cert_pem().to_owned(), pki.admin_key_pem().to_owned());
        let user = handshake(&pki, Some(admin)).await.unwrap().unwrap();
        assert_eq!(user.name, "system:admin");
        assert_eq!(user.groups, groups(&["system:masters", AUTHENTICATED_GROUP]));
    }

    #[tokio::test]
    async fn tls_client_without_a_certificate_still_connects() {
        let (_dir, pki) = new_pki();
        assert_eq!(handshake(&pki, None).await.unwrap(), None);
    }

    #[tokio::test]
    async fn tls_client_with_a_certificate_from_another_ca_is_refused() {
        let (_dir, pki) = new_pki();
        let (_other_dir, other) = new_pki();
        let stranger = other.issue_client_cert("system:admin", &["system:masters"]).unwrap();
        assert!(handshake(&pki, Some(stranger)).await.is_err());
    }
}
