//! The internal protocol between the runtime (client side, in the node agent) and `tug shim`:
//! the command lines of the three modes (builder and parser side by side so they cannot drift),
//! the one-line start report, the exit file and the attach socket's frames.

use std::ffi::OsString;
use std::path::PathBuf;

/// Why a `tug shim` command line could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgError {
    #[error("usage: tug shim <run|exec|sandbox> [flags]")]
    MissingMode,
    #[error("unknown shim mode {0:?}")]
    UnknownMode(String),
    #[error("unknown flag {0:?}")]
    UnknownFlag(String),
    #[error("flag {0} needs a value")]
    MissingValue(&'static str),
    #[error("flag {flag} has an invalid value {value:?}")]
    InvalidValue { flag: &'static str, value: String },
    #[error("flag {0} is required")]
    Required(&'static str),
    #[error("argument {0:?} is not valid UTF-8")]
    NotUtf8(OsString),
}

/// `tug shim run`: one container under a long-lived shim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunArgs {
    pub id: String,
    pub bundle: PathBuf,
    pub root: PathBuf,
    pub log: PathBuf,
    pub exit_file: PathBuf,
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    pub log_max_size: u64,
    pub log_max_files: u32,
}

/// The kubelet's defaults for `containerLogMaxSize` (10Mi) and `containerLogMaxFiles` (5).
pub const DEFAULT_LOG_MAX_SIZE: u64 = 10 * 1024 * 1024;
pub const DEFAULT_LOG_MAX_FILES: u32 = 5;

/// `tug shim sandbox`: the holder of a pod's namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxArgs {
    pub id: String,
    pub dir: PathBuf,
    pub hostname: String,
    pub new_net: bool,
    pub new_ipc: bool,
    pub new_uts: bool,
    pub share_pid: bool,
    pub cgroup: Option<String>,
    pub sysctls: Vec<(String, String)>,
}

/// `tug shim exec`: a process run in a running container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecArgs {
    pub id: String,
    pub root: PathBuf,
    pub tty: bool,
    pub cwd: Option<String>,
    pub env: Vec<(String, String)>,
    pub cmd: Vec<String>,
}

/// A parsed `tug shim` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Run(RunArgs),
    Exec(ExecArgs),
    Sandbox(SandboxArgs),
}

fn push(argv: &mut Vec<OsString>, flag: &str, value: impl Into<OsString>) {
    argv.push(flag.into());
    argv.push(value.into());
}

impl RunArgs {
    /// The arguments after the executable: `shim run --id ...`.
    pub fn to_argv(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["shim".into(), "run".into()];
        push(&mut a, "--id", &self.id);
        push(&mut a, "--bundle", &self.bundle);
        push(&mut a, "--root", &self.root);
        push(&mut a, "--log", &self.log);
        push(&mut a, "--exit-file", &self.exit_file);
        for (set, flag) in [(self.stdin, "--stdin"), (self.stdin_once, "--stdin-once"), (self.tty, "--tty")] {
            if set {
                a.push(flag.into());
            }
        }
        push(&mut a, "--log-max-size", self.log_max_size.to_string());
        push(&mut a, "--log-max-files", self.log_max_files.to_string());
        a
    }
}

impl SandboxArgs {
    pub fn to_argv(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["shim".into(), "sandbox".into()];
        push(&mut a, "--id", &self.id);
        push(&mut a, "--dir", &self.dir);
        push(&mut a, "--hostname", &self.hostname);
        for (set, flag) in [
            (self.new_net, "--new-net"),
            (self.new_ipc, "--new-ipc"),
            (self.new_uts, "--new-uts"),
            (self.share_pid, "--share-pid"),
        ] {
            if set {
                a.push(flag.into());
            }
        }
        if let Some(cgroup) = &self.cgroup {
            push(&mut a, "--cgroup", cgroup);
        }
        for (k, v) in &self.sysctls {
            push(&mut a, "--sysctl", format!("{k}={v}"));
        }
        a
    }
}

impl ExecArgs {
    pub fn to_argv(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["shim".into(), "exec".into()];
        push(&mut a, "--id", &self.id);
        push(&mut a, "--root", &self.root);
        if self.tty {
            a.push("--tty".into());
        }
        if let Some(cwd) = &self.cwd {
            push(&mut a, "--cwd", cwd);
        }
        for (k, v) in &self.env {
            push(&mut a, "--env", format!("{k}={v}"));
        }
        a.push("--".into());
        a.extend(self.cmd.iter().map(OsString::from));
        a
    }
}

/// A cursor over the flags of one mode.
struct Flags {
    args: std::vec::IntoIter<String>,
}

impl Flags {
    fn value(&mut self, flag: &'static str) -> Result<String, ArgError> {
        self.args.next().ok_or(ArgError::MissingValue(flag))
    }

    fn number<T: std::str::FromStr>(&mut self, flag: &'static str) -> Result<T, ArgError> {
        let value = self.value(flag)?;
        value.parse().map_err(|_| ArgError::InvalidValue { flag, value })
    }

    fn pair(&mut self, flag: &'static str) -> Result<(String, String), ArgError> {
        let value = self.value(flag)?;
        match value.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(ArgError::InvalidValue { flag, value }),
        }
    }
}

fn required<T>(value: Option<T>, flag: &'static str) -> Result<T, ArgError> {
    value.ok_or(ArgError::Required(flag))
}

/// Parses the arguments after `tug shim` (the mode first).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Mode, ArgError> {
    let args: Vec<String> =
        args.into_iter().map(|a| a.into_string().map_err(ArgError::NotUtf8)).collect::<Result<_, _>>()?;
    let mut args = args.into_iter();
    let mode = args.next().ok_or(ArgError::MissingMode)?;
    let mut flags = Flags { args };
    match mode.as_str() {
        "run" => parse_run(&mut flags).map(Mode::Run),
        "exec" => parse_exec(&mut flags).map(Mode::Exec),
        "sandbox" => parse_sandbox(&mut flags).map(Mode::Sandbox),
        _ => Err(ArgError::UnknownMode(mode)),
    }
}

fn parse_run(f: &mut Flags) -> Result<RunArgs, ArgError> {
    let (mut id, mut bundle, mut root, mut log, mut exit_file) = (None, None, None, None, None);
    let mut a = RunArgs {
        id: String::new(),
        bundle: PathBuf::new(),
        root: PathBuf::new(),
        log: PathBuf::new(),
        exit_file: PathBuf::new(),
        stdin: false,
        stdin_once: false,
        tty: false,
        log_max_size: DEFAULT_LOG_MAX_SIZE,
        log_max_files: DEFAULT_LOG_MAX_FILES,
    };
    while let Some(flag) = f.args.next() {
        match flag.as_str() {
            "--id" => id = Some(f.value("--id")?),
            "--bundle" => bundle = Some(f.value("--bundle")?),
            "--root" => root = Some(f.value("--root")?),
            "--log" => log = Some(f.value("--log")?),
            "--exit-file" => exit_file = Some(f.value("--exit-file")?),
            "--stdin" => a.stdin = true,
            "--stdin-once" => a.stdin_once = true,
            "--tty" => a.tty = true,
            "--log-max-size" => a.log_max_size = f.number("--log-max-size")?,
            "--log-max-files" => a.log_max_files = f.number("--log-max-files")?,
            _ => return Err(ArgError::UnknownFlag(flag)),
        }
    }
    a.id = required(id, "--id")?;
    a.bundle = required(bundle, "--bundle")?.into();
    a.root = required(root, "--root")?.into();
    a.log = required(log, "--log")?.into();
    a.exit_file = required(exit_file, "--exit-file")?.into();
    Ok(a)
}

fn parse_exec(f: &mut Flags) -> Result<ExecArgs, ArgError> {
    let (mut id, mut root) = (None, None);
    let mut a = ExecArgs { id: String::new(), root: PathBuf::new(), tty: false, cwd: None, env: vec![], cmd: vec![] };
    while let Some(flag) = f.args.next() {
        match flag.as_str() {
            "--id" => id = Some(f.value("--id")?),
            "--root" => root = Some(f.value("--root")?),
            "--tty" => a.tty = true,
            "--cwd" => a.cwd = Some(f.value("--cwd")?),
            "--env" => a.env.push(f.pair("--env")?),
            "--" => {
                a.cmd = f.args.by_ref().collect();
                break;
            }
            _ => return Err(ArgError::UnknownFlag(flag)),
        }
    }
    a.id = required(id, "--id")?;
    a.root = required(root, "--root")?.into();
    if a.cmd.is_empty() {
        return Err(ArgError::Required("-- CMD"));
    }
    Ok(a)
}

fn parse_sandbox(f: &mut Flags) -> Result<SandboxArgs, ArgError> {
    let (mut id, mut dir, mut hostname) = (None, None, None);
    let mut a = SandboxArgs {
        id: String::new(),
        dir: PathBuf::new(),
        hostname: String::new(),
        new_net: false,
        new_ipc: false,
        new_uts: false,
        share_pid: false,
        cgroup: None,
        sysctls: vec![],
    };
    while let Some(flag) = f.args.next() {
        match flag.as_str() {
            "--id" => id = Some(f.value("--id")?),
            "--dir" => dir = Some(f.value("--dir")?),
            "--hostname" => hostname = Some(f.value("--hostname")?),
            "--new-net" => a.new_net = true,
            "--new-ipc" => a.new_ipc = true,
            "--new-uts" => a.new_uts = true,
            "--share-pid" => a.share_pid = true,
            "--cgroup" => a.cgroup = Some(f.value("--cgroup")?),
            "--sysctl" => a.sysctls.push(f.pair("--sysctl")?),
            _ => return Err(ArgError::UnknownFlag(flag)),
        }
    }
    a.id = required(id, "--id")?;
    a.dir = required(dir, "--dir")?.into();
    a.hostname = required(hostname, "--hostname")?;
    Ok(a)
}

/// The one JSON line a daemonizing shim writes to its stdout once the container (or sandbox)
/// runs, or why it could not start it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Report {
    Started { shim_pid: u32, pid: u32 },
    Failed { error: String },
}

/// How a container ended, as the shim writes it to the exit file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExitRecord {
    /// The exit status; 128 + signal number when a signal killed it.
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub started_at: jiff::Timestamp,
    pub finished_at: jiff::Timestamp,
}

/// Frame kinds on the attach socket.
pub mod frame {
    /// Client to shim: bytes for the container's stdin.
    pub const STDIN: u8 = 0;
    /// Shim to client: bytes the container wrote to stdout (or to its terminal).
    pub const STDOUT: u8 = 1;
    /// Shim to client: bytes the container wrote to stderr.
    pub const STDERR: u8 = 2;
    /// Client to shim: terminal size, u16 BE columns then u16 BE rows.
    pub const RESIZE: u8 = 3;
    /// Client to shim: close the container's stdin.
    pub const CLOSE_STDIN: u8 = 4;
    /// Shim to client: the container exited; i32 BE exit code.
    pub const EXITED: u8 = 5;
    /// Bytes before the payload: kind and u32 BE length.
    pub const HEADER: usize = 5;
    /// The largest payload either side accepts.
    pub const MAX_PAYLOAD: usize = 1 << 20;
}

/// Encodes one attach frame.
pub fn encode_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame::HEADER + payload.len());
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A decoded frame: its kind, its payload and how many bytes of the buffer it took.
pub type Frame<'a> = (u8, &'a [u8], usize);

/// Splits the first complete frame off `buf`, if there is one. A frame longer than
/// [`frame::MAX_PAYLOAD`] is an error (carrying the length it claimed).
pub fn decode_frame(buf: &[u8]) -> Result<Option<Frame<'_>>, usize> {
    if buf.len() < frame::HEADER {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > frame::MAX_PAYLOAD {
        return Err(len);
    }
    if buf.len() < frame::HEADER + len {
        return Ok(None);
    }
    Ok(Some((buf[0], &buf[frame::HEADER..frame::HEADER + len], frame::HEADER + len)))
}

/// Turns a libcontainer start failure into the words upstream runtimes use, so the kubelet
/// shows what users know from runc: `exec: "nope": executable file not found in $PATH`.
/// Returns the message and the exit code a shell would give (127 not found, 126 not
/// executable) when the failure is about the executable.
pub fn start_error_message(raw: &str) -> (String, Option<i32>) {
    if let Some(name) = between(raw, "executable '", "' not found in $PATH") {
        // A path is not looked up in $PATH: Go's exec.LookPath reports the failed stat.
        if name.contains('/') {
            return (format!("exec: \"{name}\": stat {name}: no such file or directory"), Some(127));
        }
        return (format!("exec: \"{name}\": executable file not found in $PATH"), Some(127));
    }
    if let Some(name) = between(raw, "executable '", "' at path")
        && raw.contains("does not have correct permissions")
    {
        return (format!("exec: \"{name}\": permission denied"), Some(126));
    }
    (raw.to_string(), None)
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = s.find(start)? + start.len();
    let len = s[from..].find(end)?;
    Some(&s[from..from + len])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(argv: Vec<OsString>) -> Vec<OsString> {
        argv.into_iter().skip(1).collect()
    }

    #[test]
    fn run_args_round_trip_through_the_command_line() {
        let a = RunArgs {
            id: "c1".into(),
            bundle: "/b".into(),
            root: "/r".into(),
            log: "/l/0.log".into(),
            exit_file: "/e/exit".into(),
            stdin: true,
            stdin_once: true,
            tty: false,
            log_max_size: 100,
            log_max_files: 2,
        };
        assert_eq!(parse(os(a.to_argv())), Ok(Mode::Run(a)));
    }

    #[test]
    fn sandbox_and_exec_args_round_trip_through_the_command_line() {
        let s = SandboxArgs {
            id: "s".into(),
            dir: "/d".into(),
            hostname: "web-0".into(),
            new_net: true,
            new_ipc: false,
            new_uts: true,
            share_pid: true,
            cgroup: Some("/kubepods/pod1".into()),
            sysctls: vec![("net.ipv4.ip_forward".into(), "1".into())],
        };
        assert_eq!(parse(os(s.to_argv())), Ok(Mode::Sandbox(s)));
        let e = ExecArgs {
            id: "c".into(),
            root: "/r".into(),
            tty: true,
            cwd: Some("/tmp".into()),
            env: vec![("A".into(), "b=c".into())],
            cmd: vec!["sh".into(), "--".into(), "-c".into()],
        };
        assert_eq!(parse(os(e.to_argv())), Ok(Mode::Exec(e)));
    }

    #[test]
    fn run_without_required_flags_is_refused() {
        let err = parse(["run", "--id", "x"].map(OsString::from)).unwrap_err();
        assert_eq!(err, ArgError::Required("--bundle"));
    }

    #[test]
    fn reports_serialize_as_one_flat_object() {
        let s = serde_json::to_string(&Report::Started { shim_pid: 1, pid: 2 }).unwrap();
        assert_eq!(s, r#"{"shim_pid":1,"pid":2}"#);
        let f: Report = serde_json::from_str(r#"{"error":"boom"}"#).unwrap();
        assert_eq!(f, Report::Failed { error: "boom".into() });
    }

    #[test]
    fn frames_decode_what_they_encode() {
        let mut buf = encode_frame(frame::STDOUT, b"hello");
        buf.extend(encode_frame(frame::EXITED, &3i32.to_be_bytes()));
        let (k, p, n) = decode_frame(&buf).unwrap().unwrap();
        assert_eq!((k, p), (frame::STDOUT, &b"hello"[..]));
        let (k, p, _) = decode_frame(&buf[n..]).unwrap().unwrap();
        assert_eq!((k, p), (frame::EXITED, &3i32.to_be_bytes()[..]));
        assert_eq!(decode_frame(&buf[..3]), Ok(None));
    }

    #[test]
    fn missing_executable_is_worded_as_runc_words_it() {
        let raw = "failed to create container: error in executing process : invalid executable: \
                   executable 'nope' not found in $PATH";
        assert_eq!(
            start_error_message(raw),
            (r#"exec: "nope": executable file not found in $PATH"#.to_string(), Some(127))
        );
        assert_eq!(
            start_error_message("executable '/bin/nope' not found in $PATH"),
            (r#"exec: "/bin/nope": stat /bin/nope: no such file or directory"#.to_string(), Some(127))
        );
        assert_eq!(
            start_error_message("executable 'f' at path '\"/bin/f\"' does not have correct permissions").1,
            Some(126)
        );
        assert_eq!(start_error_message("something else"), ("something else".to_string(), None));
    }
}
