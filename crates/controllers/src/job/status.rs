//! Job conditions and status bookkeeping (upstream's `pkg/controller/job/util` and the
//! condition helpers of `job_controller.go`), with upstream's condition types, reasons and
//! messages.

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

pub const COMPLETE: &str = "Complete";
pub const FAILED: &str = "Failed";
pub const SUSPENDED: &str = "Suspended";
pub const FAILURE_TARGET: &str = "FailureTarget";
pub const SUCCESS_CRITERIA_MET: &str = "SuccessCriteriaMet";

pub const REASON_BACKOFF_LIMIT_EXCEEDED: &str = "BackoffLimitExceeded";
pub const REASON_DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
pub const REASON_POD_FAILURE_POLICY: &str = "PodFailurePolicy";
pub const REASON_FAILED_INDEXES: &str = "FailedIndexes";
pub const REASON_MAX_FAILED_INDEXES_EXCEEDED: &str = "MaxFailedIndexesExceeded";
pub const REASON_SUCCESS_POLICY: &str = "SuccessPolicy";
pub const REASON_COMPLETIONS_REACHED: &str = "CompletionsReached";

/// A condition the Job is heading to: `FailureTarget` or `SuccessCriteriaMet`, then the
/// terminal `Failed` or `Complete` with the same reason and message once no pod is left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    pub failed: bool,
    pub reason: String,
    pub message: String,
}

impl Finish {
    pub fn failure(reason: &str, message: impl Into<String>) -> Self {
        Self { failed: true, reason: reason.into(), message: message.into() }
    }
    pub fn success(reason: &str, message: impl Into<String>) -> Self {
        Self { failed: false, reason: reason.into(), message: message.into() }
    }
    pub fn interim_type(&self) -> &'static str {
        if self.failed { FAILURE_TARGET } else { SUCCESS_CRITERIA_MET }
    }
    pub fn terminal_type(&self) -> &'static str {
        if self.failed { FAILED } else { COMPLETE }
    }
}

/// The condition of `type_` if its status is `True`.
pub fn true_condition<'a>(status: &'a JobStatus, type_: &str) -> Option<&'a JobCondition> {
    status.conditions.iter().flatten().find(|c| c.type_ == type_ && c.status == "True")
}

/// Whether the Job has a terminal condition (upstream's `IsJobFinished`).
pub fn is_finished(job: &Job) -> bool {
    job.status.as_ref().is_some_and(|s| true_condition(s, COMPLETE).is_some() || true_condition(s, FAILED).is_some())
}

/// When the Job finished: its completion time, else the terminal condition's transition.
pub fn finish_time(job: &Job) -> Option<Timestamp> {
    let status = job.status.as_ref()?;
    if let Some(t) = &status.completion_time {
        return Some(t.0);
    }
    let c = true_condition(status, COMPLETE).or_else(|| true_condition(status, FAILED))?;
    c.last_transition_time.as_ref().map(|t| t.0)
}

/// The interim condition already set, as a [`Finish`].
pub fn interim(status: &JobStatus) -> Option<Finish> {
    let (c, failed) = match true_condition(status, FAILURE_TARGET) {
        Some(c) => (c, true),
        None => (true_condition(status, SUCCESS_CRITERIA_MET)?, false),
    };
    Some(Finish {
        failed,
        reason: c.reason.clone().unwrap_or_default(),
        message: c.message.clone().unwrap_or_default(),
    })
}

/// Sets condition `type_` to `status` (upstream's `ensureJobConditionStatus`): a new condition
/// is appended; an existing one changes (with a new transition time) only if its status,
/// reason or message differs. Returns whether anything changed.
pub fn set_condition(
    s: &mut JobStatus,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> bool {
    let conditions = s.conditions.get_or_insert_with(Vec::new);
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status == status && c.reason.as_deref() == Some(reason) && c.message.as_deref() == Some(message) {
            return false;
        }
        if c.status != status {
            c.last_transition_time = Some(Time(now));
        }
        c.status = status.into();
        c.reason = Some(reason.into());
        c.message = Some(message.into());
        c.last_probe_time = Some(Time(now));
        return true;
    }
    // A condition that would be created False says nothing new.
    if status == "False" {
        return false;
    }
    conditions.push(JobCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_change_only_when_they_differ() {
        let t0: Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2024-01-01T00:01:00Z".parse().unwrap();
        let mut s = JobStatus::default();
        assert!(!set_condition(&mut s, SUSPENDED, "False", "JobResumed", "Job resumed", t0));
        assert!(set_condition(&mut s, SUSPENDED, "True", "JobSuspended", "Job suspended", t0));
        assert!(!set_condition(&mut s, SUSPENDED, "True", "JobSuspended", "Job suspended", t1));
        assert!(set_condition(&mut s, SUSPENDED, "False", "JobResumed", "Job resumed", t1));
        let c = &s.conditions.as_ref().unwrap()[0];
        assert_eq!(c.last_transition_time, Some(Time(t1)));
        assert_eq!(c.status, "False");
    }

    #[test]
    fn interim_conditions_say_where_the_job_is_heading() {
        let now: Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
        let mut s = JobStatus::default();
        assert_eq!(interim(&s), None);
        set_condition(&mut s, FAILURE_TARGET, "True", REASON_BACKOFF_LIMIT_EXCEEDED, "m", now);
        let f = interim(&s).unwrap();
        assert!(f.failed);
        assert_eq!(f.terminal_type(), FAILED);
        assert_eq!(f.reason, REASON_BACKOFF_LIMIT_EXCEEDED);
    }
}
