//! A container's log file in the CRI log format, as containerd writes it and the kubelet reads
//! it for `kubectl logs`: one record per line,
//! `<RFC3339Nano UTC time> <stdout|stderr> <F|P> <content>`, where `P` marks a piece of a line
//! longer than [`MAX_LINE`] and `F` its end. The file is rotated by size, as the kubelet's
//! container log manager does: renamed to `<file>.<YYYYMMDD-HHMMSS>` and reopened, keeping
//! `max_files - 1` rotated files.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Lines longer than this are split into partial records (containerd's 16 KiB buffer).
pub const MAX_LINE: usize = 16 * 1024;

/// Which output stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// Errors of the log writer.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{operation} {path}: {source}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LogError {
    let path = path.to_path_buf();
    move |source| LogError::Io { operation, path, source }
}

/// Writes a container's output into its CRI log file.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_files: u32,
    /// Bytes of an unfinished line, per stream (stdout, stderr).
    pending: [Vec<u8>; 2],
}

impl LogWriter {
    /// Opens (appending to) or creates the log file, creating its directory.
    pub fn open(path: &Path, max_size: u64, max_files: u32) -> Result<Self, LogError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        }
        let file = open_append(path)?;
        let size = file.metadata().map_err(io_err("stat", path))?.len();
        Ok(LogWriter { path: path.to_path_buf(), file, size, max_size, max_files, pending: [vec![], vec![]] })
    }

    /// Logs `data` read from `stream` at `now`: every complete line as an `F` record, and
    /// unfinished lines longer than [`MAX_LINE`] as `P` records; the rest waits for more data.
    pub fn write(&mut self, stream: Stream, data: &[u8], now: jiff::Timestamp) -> Result<(), LogError> {
        let mut pending = std::mem::take(&mut self.pending[stream.index()]);
        pending.extend_from_slice(data);
        let mut start = 0;
        let result = loop {
            let rest = &pending[start..];
            let newline = rest.iter().take(MAX_LINE + 1).position(|&b| b == b'\n');
            match newline {
                Some(n) if n <= MAX_LINE => {
                    if let Err(e) = self.record(stream, b'F', &rest[..n], now) {
                        break Err(e);
                    }
                    start += n + 1;
                }
                // No newline within reach: a piece of a long line. Exactly MAX_LINE bytes wait, as
                // the next byte may end the line.
                _ if rest.len() > MAX_LINE => {
                    if let Err(e) = self.record(stream, b'P', &rest[..MAX_LINE], now) {
                        break Err(e);
                    }
                    start += MAX_LINE;
                }
                _ => break Ok(()),
            }
        };
        pending.drain(..start);
        self.pending[stream.index()] = pending;
        result
    }

    /// Logs what is left of an unfinished line on `stream` (at end of output) as an `F` record.
    pub fn finish(&mut self, stream: Stream, now: jiff::Timestamp) -> Result<(), LogError> {
        let pending = std::mem::take(&mut self.pending[stream.index()]);
        if pending.is_empty() {
            return Ok(());
        }
        self.record(stream, b'F', &pending, now)
    }

    fn record(&mut self, stream: Stream, tag: u8, content: &[u8], now: jiff::Timestamp) -> Result<(), LogError> {
        let mut line = Vec::with_capacity(content.len() + 48);
        // RFC3339Nano as Go formats it: UTC, fraction without trailing zeros.
        write!(line, "{now} {} {} ", stream.as_str(), tag as char).expect("writing to a Vec cannot fail");
        line.extend_from_slice(content);
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.max_size {
            self.rotate(now)?;
        }
        self.file.write_all(&line).map_err(io_err("write", &self.path))?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// Renames the current file aside and reopens a new one, dropping the oldest rotated files.
    fn rotate(&mut self, now: jiff::Timestamp) -> Result<(), LogError> {
        let stamp = now.strftime("%Y%m%d-%H%M%S").to_string();
        // Rotations within one second get a counter above the highest one of that second (not
        // the first free one: older files of that second may have been deleted), so that the
        // names order as the rotations happened.
        let counter = self.rotated_files()?.iter().filter(|r| r.stamp == stamp).map(|r| r.counter + 1).max();
        let target = match counter {
            None => PathBuf::from(format!("{}.{stamp}", self.path.display())),
            Some(n) => PathBuf::from(format!("{}.{stamp}.{n}", self.path.display())),
        };
        std::fs::rename(&self.path, &target).map_err(io_err("rename", &self.path))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        let mut rotated = self.rotated_files()?;
        rotated.sort_by(|a, b| (&a.stamp, a.counter).cmp(&(&b.stamp, b.counter)));
        let keep = self.max_files.saturating_sub(1) as usize;
        let excess = rotated.len().saturating_sub(keep);
        for old in rotated.into_iter().take(excess) {
            std::fs::remove_file(&old.path).map_err(io_err("remove", &old.path))?;
        }
        Ok(())
    }

    /// The rotated siblings of the log file (`<name>.<YYYYMMDD-HHMMSS>[.n]`).
    fn rotated_files(&self) -> Result<Vec<Rotated>, LogError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let prefix = format!("{name}.");
        let mut out = vec![];
        for entry in std::fs::read_dir(dir).map_err(io_err("read directory", dir))? {
            let entry = entry.map_err(io_err("read directory", dir))?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let Some(suffix) = file_name.strip_prefix(&prefix) else { continue };
            let (stamp, counter) = match suffix.split_once('.') {
                Some((stamp, n)) => match n.parse() {
                    Ok(n) => (stamp, n),
                    Err(_) => continue,
                },
                None => (suffix, 0),
            };
            let is_stamp = stamp.len() == 15
                && stamp.bytes().enumerate().all(|(i, b)| if i == 8 { b == b'-' } else { b.is_ascii_digit() });
            if is_stamp {
                out.push(Rotated { path: entry.path(), stamp: stamp.to_string(), counter });
            }
        }
        Ok(out)
    }
}

/// A rotated log file: its time stamp and its counter within that second (0 for the first).
struct Rotated {
    path: PathBuf,
    stamp: String,
    counter: u64,
}

fn open_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_CLOEXEC)
        .mode(0o640)
        .open(path)
        .map_err(io_err("open", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn complete_lines_become_full_records_per_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/0.log");
        let mut w = LogWriter::open(&path, 1 << 20, 5).unwrap();
        let t = at("2026-01-02T03:04:05.123456789Z");
        w.write(Stream::Stdout, b"hello\nwor", t).unwrap();
        w.write(Stream::Stderr, b"err\n", t).unwrap();
        w.write(Stream::Stdout, b"ld\n\n", t).unwrap();
        assert_eq!(
            read(&path),
            "2026-01-02T03:04:05.123456789Z stdout F hello\n\
             2026-01-02T03:04:05.123456789Z stderr F err\n\
             2026-01-02T03:04:05.123456789Z stdout F world\n\
             2026-01-02T03:04:05.123456789Z stdout F \n"
        );
    }

    #[test]
    fn long_lines_are_split_into_partial_records_and_a_final_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut w = LogWriter::open(&path, 1 << 30, 5).unwrap();
        let t = at("2026-01-02T03:04:05Z");
        let mut data = vec![b'a'; MAX_LINE * 2 + 10];
        data.push(b'\n');
        w.write(Stream::Stdout, &data[..100], t).unwrap();
        w.write(Stream::Stdout, &data[100..], t).unwrap();
        let text = read(&path);
        let records: Vec<(&str, usize)> = text
            .lines()
            .map(|l| {
                let mut parts = l.splitn(4, ' ');
                let (_, _, tag, content) = (parts.next(), parts.next(), parts.next().unwrap(), parts.next().unwrap());
                (tag, content.len())
            })
            .collect();
        assert_eq!(records, vec![("P", MAX_LINE), ("P", MAX_LINE), ("F", 10)]);
    }

    #[test]
    fn a_line_of_exactly_the_limit_with_its_newline_is_one_full_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut w = LogWriter::open(&path, 1 << 30, 5).unwrap();
        let mut data = vec![b'x'; MAX_LINE];
        w.write(Stream::Stdout, &data, at("2026-01-02T03:04:05Z")).unwrap();
        assert_eq!(read(&path), "", "waits for the newline");
        data = b"\n".to_vec();
        w.write(Stream::Stdout, &data, at("2026-01-02T03:04:05Z")).unwrap();
        let text = read(&path);
        assert_eq!(text.lines().count(), 1);
        assert!(text.contains(" stdout F xxx"));
    }

    #[test]
    fn output_without_final_newline_is_a_full_record_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut w = LogWriter::open(&path, 1 << 20, 5).unwrap();
        w.write(Stream::Stderr, b"no newline", at("2026-01-02T03:04:05Z")).unwrap();
        assert_eq!(read(&path), "");
        w.finish(Stream::Stderr, at("2026-01-02T03:04:06Z")).unwrap();
        w.finish(Stream::Stdout, at("2026-01-02T03:04:06Z")).unwrap();
        assert_eq!(read(&path), "2026-01-02T03:04:06Z stderr F no newline\n");
    }

    #[test]
    fn the_file_is_rotated_by_size_keeping_max_files_minus_one_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut w = LogWriter::open(&path, 100, 3).unwrap();
        // Each record is 50 bytes: 20 (time) + 1 + 6 + 1 + 1 + 1 + 19 + 1.
        let line = b"0123456789abcdefghi\n";
        for second in 0..8 {
            w.write(Stream::Stdout, line, at(&format!("2026-01-02T03:04:{second:02}Z"))).unwrap();
        }
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, vec!["0.log", "0.log.20260102-030404", "0.log.20260102-030406"]);
        assert_eq!(read(&path).lines().count(), 2);
        assert!(read(&path).starts_with("2026-01-02T03:04:06Z stdout F 0123"));
    }

    #[test]
    fn rotations_within_one_second_keep_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut w = LogWriter::open(&path, 60, 10).unwrap();
        let t = at("2026-01-02T03:04:05Z");
        for _ in 0..3 {
            w.write(Stream::Stdout, b"0123456789abcdefghi\n", t).unwrap();
        }
        assert!(dir.path().join("0.log.20260102-030405").exists());
        assert!(dir.path().join("0.log.20260102-030405.1").exists());
    }

    #[test]
    fn the_oldest_rotated_files_go_first_even_past_ten_in_one_second() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut w = LogWriter::open(&path, 60, 3).unwrap();
        let t = at("2026-01-02T03:04:05Z");
        for _ in 0..14 {
            w.write(Stream::Stdout, b"0123456789abcdefghi\n", t).unwrap();
        }
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, vec!["0.log", "0.log.20260102-030405.11", "0.log.20260102-030405.12"]);
    }

    #[test]
    fn reopening_appends_to_the_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, "old\n").unwrap();
        let mut w = LogWriter::open(&path, 1 << 20, 5).unwrap();
        w.write(Stream::Stdout, b"new\n", at("2026-01-02T03:04:05Z")).unwrap();
        assert_eq!(read(&path), "old\n2026-01-02T03:04:05Z stdout F new\n");
    }
}
