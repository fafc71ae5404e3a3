//! Names outside the cluster: forwarded to the host's resolvers (CoreDNS's `forward . /etc/resolv.conf`)
//! behind a small cache of answers and denials (its `cache 30`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{RData, Record};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UdpSocket};
use tracing::debug;

/// Longest time an upstream answer or denial is served from the cache (k3s' `cache 30`).
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(30);
/// Denials without an SOA to bound them are cached this long.
const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Entries kept before the cache is swept.
const MAX_ENTRIES: usize = 10_000;
/// How long one upstream gets before the next is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no upstream resolver is configured")]
    NoUpstream,
    #[error("upstream {upstream} did not answer in time")]
    Timeout { upstream: SocketAddr },
    #[error("talking to upstream {upstream}")]
    Io { upstream: SocketAddr, source: std::io::Error },
    #[error("encoding the query for upstream {upstream}")]
    Encode { upstream: SocketAddr, source: hickory_proto::ProtoError },
    #[error("upstream {upstream} sent a message that does not decode")]
    Decode { upstream: SocketAddr, source: hickory_proto::serialize::binary::DecodeError },
}

/// The nameservers of a resolv.conf file, on port 53.
pub fn upstreams_from_resolv_conf(path: &Path) -> std::io::Result<Vec<SocketAddr>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next()).flatten()
        })
        // A scoped IPv6 address (fe80::1%eth0) is not routable from here: skip it.
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect())
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    name: String,
    qtype: u16,
    qclass: u16,
}

#[derive(Debug, Clone)]
struct Entry {
    stored: Instant,
    expires: Instant,
    response_code: ResponseCode,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

/// Upstream resolvers plus the cache in front of them.
#[derive(Debug)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    cache: Mutex<HashMap<Key, Entry>>,
}

/// What a forwarded question got: the sections to copy into the response.
#[derive(Debug, Clone, PartialEq)]
pub struct Forwarded {
    pub response_code: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
    pub from_cache: bool,
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Self { upstreams, cache: Mutex::new(HashMap::new()) }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// Answers `query` from the cache or the first upstream that answers.
    pub async fn resolve(&self, query: &Query) -> Result<Forwarded, Error> {
        let key = Key {
            name: query.name.to_ascii().to_ascii_lowercase(),
            qtype: query.query_type.into(),
            qclass: query.query_class.into(),
        };
        if let Some(hit) = self.cached(&key) {
            return Ok(hit);
        }
        let mut last = Error::NoUpstream;
        for upstream in &self.upstreams {
            match exchange(*upstream, query).await {
                Ok(message) => {
                    let forwarded = self.store(key, message);
                    return Ok(forwarded);
                }
                Err(e) => {
                    debug!(%upstream, error = %e, "upstream resolver failed; trying the next");
                    last = e;
                }
            }
        }
        Err(last)
    }

    fn cached(&self, key: &Key) -> Option<Forwarded> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let entry = cache.get(key)?;
        let now = Instant::now();
        if now >= entry.expires {
            return None;
        }
        // Count the time spent in the cache off the TTLs, as a resolver must.
        let elapsed = now.duration_since(entry.stored).as_secs() as u32;
        let age = |records: &[Record]| -> Vec<Record> {
            records
                .iter()
                .cloned()
                .map(|mut r| {
                    r.ttl = r.ttl.saturating_sub(elapsed);
                    r
                })
                .collect()
        };
        Some(Forwarded {
            response_code: entry.response_code,
            answers: age(&entry.answers),
            authorities: age(&entry.authorities),
            additionals: age(&entry.additionals),
            from_cache: true,
        })
    }

    fn store(&self, key: Key, message: Message) -> Forwarded {
        let forwarded = Forwarded {
            response_code: message.metadata.response_code,
            answers: message.answers,
            authorities: message.authorities,
            additionals: message.additionals,
            from_cache: false,
        };
        if let Some(ttl) = cache_ttl(&forwarded) {
            let now = Instant::now();
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() >= MAX_ENTRIES {
                cache.retain(|_, e| e.expires > now);
                if cache.len() >= MAX_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(
                key,
                Entry {
                    stored: now,
                    expires: now + ttl,
                    response_code: forwarded.response_code,
                    answers: forwarded.answers.clone(),
                    authorities: forwarded.authorities.clone(),
                    additionals: forwarded.additionals.clone(),
                },
            );
        }
        forwarded
    }
}

/// How long an upstream response may be cached: its smallest answer TTL, or for a denial its
/// SOA's negative TTL (RFC 2308); failures are not cached.
fn cache_ttl(forwarded: &Forwarded) -> Option<Duration> {
    let secs = match forwarded.response_code {
        ResponseCode::NoError if !forwarded.answers.is_empty() => forwarded.answers.iter().map(|r| r.ttl).min()?,
        ResponseCode::NoError | ResponseCode::NXDomain => forwarded
            .authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
            .unwrap_or(DEFAULT_NEGATIVE_TTL.as_secs() as u32),
        _ => return None,
    };
    let ttl = Duration::from_secs(u64::from(secs)).min(MAX_CACHE_TTL);
    (!ttl.is_zero()).then_some(ttl)
}

/// One question to one upstream: over UDP, again over TCP when the answer was truncated.
async fn exchange(upstream: SocketAddr, query: &Query) -> Result<Message, Error> {
    // A random id (hickory draws it from the OS-seeded generator): harder to spoof.
    let mut request = Message::query();
    let id = request.metadata.id;
    request.metadata.recursion_desired = true;
    request.add_query(query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    request.set_edns(edns);
    let bytes = request.to_vec().map_err(|source| Error::Encode { upstream, source })?;
    let io = |source| Error::Io { upstream, source };
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.map_err(io)?;
    socket.connect(upstream).await.map_err(io)?;
    socket.send(&bytes).await.map_err(io)?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    let message = loop {
        let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
            .await
            .map_err(|_| Error::Timeout { upstream })?
            .map_err(io)?;
        match Message::from_vec(&buf[..n]) {
            // A late answer to an earlier question on a reused port: wait for ours.
            Ok(m) if m.metadata.id != id => continue,
            Ok(m) => break m,
            Err(source) => return Err(Error::Decode { upstream, source }),
        }
    };
    if !message.metadata.truncation {
        return Ok(message);
    }
    let exchange_tcp = async {
        let mut stream = TcpStream::connect(upstream).await?;
        let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
        stream.write_all(&len.to_be_bytes()).await?;
        stream.write_all(&bytes).await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let body = tokio::time::timeout(UPSTREAM_TIMEOUT, exchange_tcp)
        .await
        .map_err(|_| Error::Timeout { upstream })?
        .map_err(io)?;
    Message::from_vec(&body).map_err(|source| Error::Decode { upstream, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Name;
    use hickory_proto::rr::rdata::{A, SOA};

    fn record(ttl: u32) -> Record {
        Record::from_rdata(Name::from_ascii("example.org.").unwrap(), ttl, RData::A(A(Ipv4Addr::new(192, 0, 2, 1))))
    }

    fn forwarded(code: ResponseCode, answers: Vec<Record>, authorities: Vec<Record>) -> Forwarded {
        Forwarded { response_code: code, answers, authorities, additionals: vec![], from_cache: false }
    }

    #[test]
    fn answers_are_cached_for_their_smallest_ttl_at_most_thirty_seconds() {
        assert_eq!(
            cache_ttl(&forwarded(ResponseCode::NoError, vec![record(10), record(7)], vec![])),
            Some(Duration::from_secs(7))
        );
        assert_eq!(cache_ttl(&forwarded(ResponseCode::NoError, vec![record(3600)], vec![])), Some(MAX_CACHE_TTL));
        assert_eq!(cache_ttl(&forwarded(ResponseCode::NoError, vec![record(0)], vec![])), None);
    }

    #[test]
    fn denials_are_cached_for_the_soa_negative_ttl_and_failures_not_at_all() {
        let soa = SOA::new(Name::root(), Name::root(), 1, 1, 1, 1, 12);
        let soa = Record::from_rdata(Name::from_ascii("org.").unwrap(), 60, RData::SOA(soa));
        assert_eq!(cache_ttl(&forwarded(ResponseCode::NXDomain, vec![], vec![soa])), Some(Duration::from_secs(12)));
        assert_eq!(cache_ttl(&forwarded(ResponseCode::NXDomain, vec![], vec![])), Some(DEFAULT_NEGATIVE_TTL));
        assert_eq!(cache_ttl(&forwarded(ResponseCode::ServFail, vec![], vec![])), None);
    }

    #[test]
    fn nameservers_are_read_from_resolv_conf() {
        let dir = std::env::temp_dir().join(format!("tug-dns-resolv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("resolv.conf");
        std::fs::write(&path, "# comment\nsearch example.org\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\nnameserver ::1\noptions ndots:5\n").unwrap();
        let upstreams = upstreams_from_resolv_conf(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(upstreams, vec!["192.0.2.53:53".parse().unwrap(), "[::1]:53".parse().unwrap()]);
    }
}
