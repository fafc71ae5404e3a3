//! Signals to container and sandbox processes the runtime did not start itself (their shims
//! did, possibly before the node agent restarted).
//!
//! A recorded pid may have been reused once the process is gone, so a signal goes through a
//! pidfd opened first and is only sent while the process's exit has not been recorded: between
//! the two the process cannot be reaped and its pid cannot be reused, because its shim is the
//! one that reaps it and writes the exit file right after.

use std::path::Path;

use rustix::process::{Pid, PidfdFlags, Signal};

/// Whether a process with `pid` exists (any process: callers combine this with their records).
pub fn alive(pid: u32) -> bool {
    let Some(pid) = Pid::from_raw(pid as i32) else { return false };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        // It exists but we may not signal it: still alive.
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

/// Sends `signal` to `pid` unless `exit_file` already records that the process ended.
/// Returns whether the signal was sent.
pub fn signal_unless_exited(pid: u32, signal: i32, exit_file: Option<&Path>) -> bool {
    let Some(pid) = Pid::from_raw(pid as i32) else { return false };
    let Some(signal) = Signal::from_named_raw(signal) else { return false };
    let Ok(pidfd) = rustix::process::pidfd_open(pid, PidfdFlags::empty()) else { return false };
    if exit_file.is_some_and(Path::exists) {
        return false;
    }
    rustix::process::pidfd_send_signal(&pidfd, signal).is_ok()
}

/// The number of a signal named as in a pod spec or an image's STOPSIGNAL (`SIGQUIT`, `QUIT`
/// or `3`), if it is one.
pub fn parse_signal(name: &str) -> Option<i32> {
    let name = name.trim();
    if let Ok(number) = name.parse::<i32>() {
        return Signal::from_named_raw(number).map(|_| number);
    }
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let number = match bare {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ILL" => 4,
        "TRAP" => 5,
        "ABRT" | "IOT" => 6,
        "BUS" => 7,
        "FPE" => 8,
        "KILL" => 9,
        "USR1" => 10,
        "SEGV" => 11,
        "USR2" => 12,
        "PIPE" => 13,
        "ALRM" => 14,
        "TERM" => 15,
        "STKFLT" => 16,
        "CHLD" => 17,
        "CONT" => 18,
        "STOP" => 19,
        "TSTP" => 20,
        "TTIN" => 21,
        "TTOU" => 22,
        "URG" => 23,
        "XCPU" => 24,
        "XFSZ" => 25,
        "VTALRM" => 26,
        "PROF" => 27,
        "WINCH" => 28,
        "IO" | "POLL" => 29,
        "PWR" => 30,
        "SYS" => 31,
        _ => {
            // Real-time signals: RTMIN+n.
            let offset = bare.strip_prefix("RTMIN+").and_then(|n| n.parse::<i32>().ok())?;
            return (offset <= 30).then_some(34 + offset);
        }
    };
    Some(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_parse_like_docker() {
        assert_eq!(parse_signal("SIGTERM"), Some(15));
        assert_eq!(parse_signal("QUIT"), Some(3));
        assert_eq!(parse_signal("sigkill"), Some(9));
        assert_eq!(parse_signal("2"), Some(2));
        assert_eq!(parse_signal("SIGRTMIN+3"), Some(37));
        assert_eq!(parse_signal("SIGNOPE"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_free_pid_is_not() {
        assert!(alive(std::process::id()));
        assert!(!alive(0));
        assert!(!alive(i32::MAX as u32));
    }

    #[test]
    fn no_signal_goes_to_a_process_whose_exit_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let exit = dir.path().join("exit.json");
        std::fs::write(&exit, "{}").unwrap();
        // Signal 0 would be harmless anyway; the exit file must stop it first.
        assert!(!signal_unless_exited(std::process::id(), 28, Some(&exit)));
    }
}
