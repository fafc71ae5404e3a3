//! Container logs as `kubectl logs` reads them: the CRI log files the runtime writes
//! (`pods/<namespace>_<pod>_<uid>/<container>/<restart>.log`, one record per line,
//! `<RFC3339Nano> <stdout|stderr> <F|P> <content>`), read with upstream's `PodLogOptions`
//! (follow, previous, tailLines, sinceSeconds/sinceTime, timestamps, limitBytes, stream), as
//! upstream's `kuberuntime/logs` does.
//!
//! Partial records (`P`, a long line split by the runtime) are joined into one line. Following
//! polls the file and stops once the container is no longer running; a rotated file (renamed
//! away, a new one created at the same path) is followed into the new one.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, BufReader};
use tokio::sync::mpsc;

/// How often a followed file is checked for new records.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// How often, while following, the runtime is asked whether the container still runs.
const RUNNING_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Output is sent in chunks of about this size when there is a lot to send at once.
const CHUNK: usize = 32 * 1024;

/// Which of the container's streams to return (`PodLogOptions.stream`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogStream {
    #[default]
    All,
    Stdout,
    Stderr,
}

/// What a log request asks for (upstream's `PodLogOptions`, as the kubelet's query carries it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub tail_lines: Option<u64>,
    /// Only records at or after this time (from sinceSeconds or sinceTime).
    pub since: Option<Timestamp>,
    pub timestamps: bool,
    pub limit_bytes: Option<u64>,
    pub stream: LogStream,
}

/// A request the log options cannot serve. `Decode` is a value that is not of its type (HTTP
/// 400), `Invalid` one that upstream's `ValidatePodLogOptions` refuses (HTTP 422).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogOptionsError {
    #[error("invalid value {value:?} for query parameter {param}")]
    Decode { param: String, value: String },
    #[error("{0}")]
    Invalid(String),
}

impl LogOptions {
    /// Parses the query of a `containerLogs` request; `now` anchors sinceSeconds.
    pub fn from_query(query: Option<&str>, now: Timestamp) -> Result<Self, LogOptionsError> {
        let mut options = LogOptions::default();
        let (mut since_seconds, mut since_time) = (None, None);
        for (key, value) in query_pairs(query.unwrap_or_default()) {
            let decode_err = || LogOptionsError::Decode { param: key.clone(), value: value.clone() };
            let int = |v: &str| v.parse::<i64>().map_err(|_| decode_err());
            match key.as_str() {
                "follow" => options.follow = parse_bool(&value).ok_or_else(decode_err)?,
                "previous" => options.previous = parse_bool(&value).ok_or_else(decode_err)?,
                "timestamps" => options.timestamps = parse_bool(&value).ok_or_else(decode_err)?,
                // "tail" is the old name; "all" means no limit.
                "tailLines" | "tail" if value == "all" => options.tail_lines = None,
                "tailLines" | "tail" => {
                    let n = int(&value)?;
                    if n < 0 {
                        return Err(LogOptionsError::Invalid(format!(
                            "tailLines: Invalid value: {n}: must be greater than or equal to 0"
                        )));
                    }
                    options.tail_lines = Some(n as u64);
                }
                "limitBytes" => {
                    let n = int(&value)?;
                    if n < 1 {
                        return Err(LogOptionsError::Invalid(format!(
                            "limitBytes: Invalid value: {n}: must be greater than 0"
                        )));
                    }
                    options.limit_bytes = Some(n as u64);
                }
                "sinceSeconds" => {
                    let n = int(&value)?;
                    if n < 1 {
                        return Err(LogOptionsError::Invalid(format!(
                            "sinceSeconds: Invalid value: {n}: must be greater than 0"
                        )));
                    }
                    since_seconds = Some(n);
                }
                "sinceTime" => since_time = Some(value.parse::<Timestamp>().map_err(|_| decode_err())?),
                "stream" => {
                    options.stream = match value.as_str() {
                        "" | "All" => LogStream::All,
                        "Stdout" => LogStream::Stdout,
                        "Stderr" => LogStream::Stderr,
                        _ => {
                            return Err(LogOptionsError::Invalid(format!(
                                "stream: Unsupported value: {value:?}: supported values: \"All\", \"Stdout\", \"Stderr\""
                            )));
                        }
                    }
                }
                _ => {}
            }
        }
        options.since = match (since_seconds, since_time) {
            (Some(_), Some(_)) => {
                return Err(LogOptionsError::Invalid(
                    "at most one of `sinceTime` or `sinceSeconds` may be specified".into(),
                ));
            }
            (Some(seconds), None) => Some(now - SignedDuration::from_secs(seconds)),
            (None, time) => time,
        };
        if options.stream != LogStream::All && options.tail_lines.is_some() {
            return Err(LogOptionsError::Invalid(
                "tailLines: Forbidden: `tailLines` and specific `stream` are mutually exclusive for now".into(),
            ));
        }
        Ok(options)
    }
}

/// Go's `strconv.ParseBool`, plus the empty value as false (as the API's query decoding has it).
fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "" | "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        _ => None,
    }
}

/// `key=value` pairs of a URL query, percent-decoded (`+` is a space).
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes()).into_owned().collect()
}

/// The stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub time: Timestamp,
    pub stream: Stream,
    /// `P`: the line goes on in the next record of this stream.
    pub partial: bool,
    pub content: Vec<u8>,
}

/// A line of a log file that is not a CRI log record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a CRI log record: {0:?}")]
pub struct RecordError(pub String);

/// Parses one record (without its trailing newline).
pub fn parse_record(line: &[u8]) -> Result<LogRecord, RecordError> {
    let err = || RecordError(String::from_utf8_lossy(line).chars().take(80).collect());
    let mut parts = line.splitn(4, |&b| b == b' ');
    let time = parts.next().and_then(|t| std::str::from_utf8(t).ok()).ok_or_else(err)?;
    let time: Timestamp = time.parse().map_err(|_| err())?;
    let stream = match parts.next().ok_or_else(err)? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return Err(err()),
    };
    // Tags are `:`-separated; the first says full or partial.
    let tags = parts.next().ok_or_else(err)?;
    let partial = match tags.split(|&b| b == b':').next() {
        Some(b"P") => true,
        Some(b"F") => false,
        _ => return Err(err()),
    };
    Ok(LogRecord { time, stream, partial, content: parts.next().unwrap_or_default().to_vec() })
}

/// A whole line of output, partial records joined: the time of its first record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub time: Timestamp,
    pub stream: Stream,
    /// The content with its newline.
    pub content: Vec<u8>,
}

/// Joins partial records into lines, separately for each stream (their records interleave).
#[derive(Debug, Default)]
struct LineAssembler {
    stdout: Option<LogLine>,
    stderr: Option<LogLine>,
}

impl LineAssembler {
    fn push(&mut self, record: LogRecord) -> Option<LogLine> {
        let slot = match record.stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        let line =
            slot.get_or_insert_with(|| LogLine { time: record.time, stream: record.stream, content: Vec::new() });
        line.content.extend_from_slice(&record.content);
        if record.partial {
            return None;
        }
        line.content.push(b'\n');
        slot.take()
    }
}

/// Formats lines for the response: stream filter, since, timestamps and the byte limit.
struct Output {
    options: LogOptions,
    tx: mpsc::Sender<Bytes>,
    buffer: Vec<u8>,
    written: u64,
}

/// Why output stopped early.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// The byte limit is reached.
    Limit,
    /// The client went away.
    Closed,
}

impl Output {
    fn wants(&self, line: &LogLine) -> bool {
        let stream_ok = match self.options.stream {
            LogStream::All => true,
            LogStream::Stdout => line.stream == Stream::Stdout,
            LogStream::Stderr => line.stream == Stream::Stderr,
        };
        stream_ok && self.options.since.is_none_or(|since| line.time >= since)
    }

    async fn write(&mut self, line: &LogLine) -> Result<(), Stop> {
        if !self.wants(line) {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(line.content.len() + 32);
        if self.options.timestamps {
            bytes.extend_from_slice(line.time.to_string().as_bytes());
            bytes.push(b' ');
        }
        bytes.extend_from_slice(&line.content);
        let mut limited = false;
        if let Some(limit) = self.options.limit_bytes {
            let room = limit.saturating_sub(self.written) as usize;
            if bytes.len() >= room {
                bytes.truncate(room);
                limited = true;
            }
        }
        self.written += bytes.len() as u64;
        self.buffer.extend_from_slice(&bytes);
        if limited {
            self.flush().await?;
            return Err(Stop::Limit);
        }
        if self.buffer.len() >= CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Stop> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buffer));
        self.tx.send(chunk).await.map_err(|_| Stop::Closed)
    }
}

/// Asks the runtime whether the container whose log is followed still runs.
pub type RunningCheck = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

/// Errors reading a log file.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A log file being read, with the identity of what is open to notice rotation.
struct OpenLog {
    reader: BufReader<tokio::fs::File>,
    inode: u64,
}

async fn open_log(path: &Path) -> Result<OpenLog, LogError> {
    let io = |operation| move |source| LogError::Io { operation, path: path.to_path_buf(), source };
    let file = tokio::fs::File::open(path).await.map_err(io("opening"))?;
    let inode = std::os::unix::fs::MetadataExt::ino(&file.metadata().await.map_err(io("inspecting"))?);
    Ok(OpenLog { reader: BufReader::new(file), inode })
}

/// Whether the file at `path` is no longer the one open (it was rotated away).
async fn rotated(path: &Path, open: &OpenLog) -> bool {
    match tokio::fs::metadata(path).await {
        Ok(meta) => std::os::unix::fs::MetadataExt::ino(&meta) != open.inode,
        // Renamed away and not yet recreated: keep reading the old one until it is.
        Err(_) => false,
    }
}

/// Lines read from a file per batch at most (in bytes of records), so that a big file is
/// streamed rather than held whole.
const BATCH: usize = 256 * 1024;

/// Reads records from the open file into `lines`, up to its end or about [`BATCH`] bytes;
/// returns whether the end was reached. A last line without its newline (a record being
/// written) is left for the next read when `wait_for_complete`, and parsed as it is otherwise.
async fn read_batch(
    open: &mut OpenLog,
    path: &Path,
    assembler: &mut LineAssembler,
    wait_for_complete: bool,
    lines: &mut Vec<LogLine>,
) -> Result<bool, LogError> {
    let io = |operation| move |source| LogError::Io { operation, path: path.to_path_buf(), source };
    let mut raw = Vec::new();
    let mut read = 0;
    while read < BATCH {
        raw.clear();
        let n = open.reader.read_until(b'\n', &mut raw).await.map_err(io("reading"))?;
        if n == 0 {
            return Ok(true);
        }
        read += n;
        if raw.last() != Some(&b'\n') {
            if wait_for_complete {
                open.reader.seek(std::io::SeekFrom::Current(-(n as i64))).await.map_err(io("seeking"))?;
                return Ok(true);
            }
        } else {
            raw.pop();
        }
        // Lines that are not records (a truncated write, foreign content) are skipped, as
        // upstream logs and skips them.
        let Ok(record) = parse_record(&raw) else { continue };
        lines.extend(assembler.push(record));
    }
    Ok(false)
}

/// Writes everything readable from the open file to `out`.
async fn drain(
    open: &mut OpenLog,
    path: &Path,
    assembler: &mut LineAssembler,
    wait_for_complete: bool,
    out: &mut Output,
) -> Result<Result<(), Stop>, LogError> {
    loop {
        let mut lines = Vec::new();
        let eof = read_batch(open, path, assembler, wait_for_complete, &mut lines).await?;
        for line in &lines {
            if let Err(stop) = out.write(line).await {
                return Ok(Err(stop));
            }
        }
        if eof {
            return Ok(Ok(()));
        }
    }
}

/// Streams the log at `path` into `tx` as `options` ask; with `follow`, goes on while
/// `running` says the container runs. Returns when done or when the receiver is dropped.
pub async fn stream_log(
    path: PathBuf,
    options: LogOptions,
    running: RunningCheck,
    tx: mpsc::Sender<Bytes>,
) -> Result<(), LogError> {
    let follow = options.follow;
    let tail = options.tail_lines;
    let mut out = Output { options, tx, buffer: Vec::new(), written: 0 };
    let mut open = open_log(&path).await?;
    let mut assembler = LineAssembler::default();

    // What is in the file now: all of it, or its last lines.
    let result = match tail {
        None => drain(&mut open, &path, &mut assembler, follow, &mut out).await?,
        Some(n) => {
            let mut last: VecDeque<LogLine> = VecDeque::new();
            loop {
                let mut lines = Vec::new();
                let eof = read_batch(&mut open, &path, &mut assembler, follow, &mut lines).await?;
                for line in lines {
                    if last.len() as u64 == n {
                        last.pop_front();
                    }
                    if n > 0 {
                        last.push_back(line);
                    }
                }
                if eof {
                    break;
                }
            }
            let mut result = Ok(());
            for line in &last {
                if let Err(stop) = out.write(line).await {
                    result = Err(stop);
                    break;
                }
            }
            result
        }
    };
    if result.is_err() || out.flush().await.is_err() || !follow {
        return Ok(());
    }

    // A container that has already exited has nothing more to say: answer at once.
    let mut still_running = running().await;
    let mut since_check = tokio::time::Instant::now();
    if !still_running {
        let _ = drain(&mut open, &path, &mut assembler, false, &mut out).await?;
        let _ = out.flush().await;
        return Ok(());
    }
    loop {
        if !still_running {
            // The container is gone and what it wrote last was read above: done.
            return Ok(());
        }
        tokio::select! {
            _ = out.tx.closed() => return Ok(()),
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
        }
        if since_check.elapsed() >= RUNNING_CHECK_EVERY {
            since_check = tokio::time::Instant::now();
            still_running = running().await;
        }
        let result = drain(&mut open, &path, &mut assembler, still_running, &mut out).await?;
        if result.is_err() || out.flush().await.is_err() {
            return Ok(());
        }
        if rotated(&path, &open).await {
            // Everything of the old file was read just above; go on with the new one.
            open = open_log(&path).await?;
            let result = drain(&mut open, &path, &mut assembler, still_running, &mut out).await?;
            if result.is_err() || out.flush().await.is_err() {
                return Ok(());
            }
        }
    }
}

/// Where a container's logs are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerLogs {
    /// The pod's log directory (`<ns>_<pod>_<uid>`).
    pub pod_dir: PathBuf,
    /// The pod UID the directory belongs to.
    pub pod_uid: String,
    /// The restart numbers with a log file, lowest first.
    pub attempts: Vec<u32>,
}

impl ContainerLogs {
    /// The current instance's log: the highest restart number.
    pub fn current(&self, container: &str) -> Option<(u32, PathBuf)> {
        let n = *self.attempts.last()?;
        Some((n, self.pod_dir.join(container).join(format!("{n}.log"))))
    }

    /// The previous instance's log: the next highest.
    pub fn previous(&self, container: &str) -> Option<(u32, PathBuf)> {
        let n = *self.attempts.iter().rev().nth(1)?;
        Some((n, self.pod_dir.join(container).join(format!("{n}.log"))))
    }
}

/// The pod log directories of a pod (`<ns>_<pod>_<uid>` under `log_root`), newest first.
pub fn pod_log_dirs(log_root: &Path, namespace: &str, pod: &str) -> Vec<(String, PathBuf)> {
    let prefix = format!("{namespace}_{pod}_");
    let Ok(entries) = std::fs::read_dir(log_root) else { return Vec::new() };
    let mut dirs: Vec<(std::time::SystemTime, String, PathBuf)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            // Names and namespaces have no `_`, so the rest is the UID.
            let uid = name.strip_prefix(&prefix)?;
            if uid.is_empty() || uid.contains('_') {
                return None;
            }
            let modified = e.metadata().ok()?.modified().ok()?;
            Some((modified, uid.to_string(), e.path()))
        })
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    dirs.into_iter().map(|(_, uid, path)| (uid, path)).collect()
}

/// The restart numbers with a log of `container` in `pod_dir` (`<n>.log`; rotated files,
/// `<n>.log.<time>`, are not instances).
pub fn container_attempts(pod_dir: &Path, container: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(pod_dir.join(container)) else { return Vec::new() };
    let mut attempts: Vec<u32> =
        entries.filter_map(|e| e.ok()?.file_name().into_string().ok()?.strip_suffix(".log")?.parse().ok()).collect();
    attempts.sort_unstable();
    attempts
}

/// Finds a container's logs: in the directory of `preferred_uid` when given (the pod the
/// runtime runs), otherwise in the newest directory of the pod. `None` when the pod has no log
/// directory.
pub fn find_container_logs(
    log_root: &Path,
    namespace: &str,
    pod: &str,
    container: &str,
    preferred_uid: Option<&str>,
) -> Option<ContainerLogs> {
    let dirs = pod_log_dirs(log_root, namespace, pod);
    let (uid, dir) = match preferred_uid {
        Some(want) => dirs.into_iter().find(|(uid, _)| uid == want)?,
        None => dirs.into_iter().next()?,
    };
    Some(ContainerLogs { attempts: container_attempts(&dir, container), pod_dir: dir, pod_uid: uid })
}

#[cfg(test)]
#[path = "logs_tests.rs"]
mod tests;
