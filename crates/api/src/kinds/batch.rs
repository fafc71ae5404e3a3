//! batch/v1 kinds: Job and CronJob defaults and validation as upstream.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::json;

use super::Kind;
use super::apps::validate_workload;
use super::core::default_pod_spec;
use crate::field::{FieldError, FieldPath};

const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
const JOB_NAME: &str = "batch.kubernetes.io/job-name";

impl Kind for Job {
    const FIELD_LABELS: &'static [(&'static str, &'static str)] = &[("status.successful", "status.succeeded")];

    fn set_defaults(&mut self) {
        let Some(spec) = &mut self.spec else { return };
        if spec.completions.is_none() && spec.parallelism.is_none() {
            spec.completions = Some(1);
            spec.parallelism = Some(1);
        }
        spec.parallelism.get_or_insert(1);
        // With a per-index limit the Job-wide one is effectively off, as upstream defaults it.
        spec.backoff_limit.get_or_insert(if spec.backoff_limit_per_index.is_some() { i32::MAX } else { 6 });
        spec.completion_mode.get_or_insert_with(|| "NonIndexed".into());
        spec.suspend.get_or_insert(false);
        spec.manual_selector.get_or_insert(false);
        let replacement = if spec.pod_failure_policy.is_some() { "Failed" } else { "TerminatingOrFailed" };
        spec.pod_replacement_policy.get_or_insert_with(|| replacement.into());
        if let Some(s) = &mut spec.template.spec {
            default_pod_spec(s);
        }
    }

    /// Upstream generates the selector of a job from its uid unless `manualSelector` is set,
    /// and labels the pod template to match.
    fn prepare_for_create(&mut self) {
        self.status = None;
        let (Some(uid), Some(name)) = (self.metadata.uid.clone(), self.metadata.name.clone()) else { return };
        let Some(spec) = &mut self.spec else { return };
        if spec.manual_selector == Some(true) {
            return;
        }
        let meta = spec.template.metadata.get_or_insert_with(Default::default);
        let labels = meta.labels.get_or_insert_with(BTreeMap::new);
        labels.insert(CONTROLLER_UID.into(), uid.clone());
        labels.insert(JOB_NAME.into(), name.clone());
        labels.insert("controller-uid".into(), uid.clone());
        labels.insert("job-name".into(), name);
        if spec.selector.is_none() {
            spec.selector = Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(CONTROLLER_UID.to_string(), uid)])),
                match_expressions: None,
            });
        }
    }

    fn validate(&self, errs: &mut Vec<FieldError>) {
        let path = FieldPath::new("spec");
        let Some(spec) = &self.spec else {
            return errs.push(FieldError::required(&path, ""));
        };
        validate_workload(spec.selector.as_ref(), Some(&spec.template), None, &path, errs);
        match spec.template.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
            Some("OnFailure" | "Never") => {}
            other => errs.push(FieldError::not_supported(
                &path.key("template").key("spec").key("restartPolicy"),
                json!(other.unwrap_or("")),
                &["OnFailure", "Never"],
            )),
        }
        for (field, v) in
            [("parallelism", spec.parallelism), ("completions", spec.completions), ("backoffLimit", spec.backoff_limit)]
        {
            if let Some(v) = v
                && v < 0
            {
                errs.push(FieldError::invalid(&path.key(field), json!(v), "must be greater than or equal to 0"));
            }
        }
    }

    fn validate_update(&self, old: &Self, errs: &mut Vec<FieldError>) {
        let (Some(n), Some(o)) = (&self.spec, &old.spec) else { return };
        if n.selector != o.selector {
            errs.push(FieldError::invalid(
                &FieldPath::new("spec").key("selector"),
                json!(n.selector),
                "field is immutable",
            ));
        }
        if n.completions != o.completions && n.completion_mode.as_deref() != Some("Indexed") {
            errs.push(FieldError::invalid(
                &FieldPath::new("spec").key("completions"),
                json!(n.completions),
                "field is immutable",
            ));
        }
    }
}

impl Kind for CronJob {
    fn set_defaults(&mut self) {
        let spec = &mut self.spec;
        spec.concurrency_policy.get_or_insert_with(|| "Allow".into());
        spec.suspend.get_or_insert(false);
        spec.successful_jobs_history_limit.get_or_insert(3);
        spec.failed_jobs_history_limit.get_or_insert(1);
        if let Some(js) = &mut spec.job_template.spec {
            js.backoff_limit.get_or_insert(6);
            if js.completions.is_none() && js.parallelism.is_none() {
                js.completions = Some(1);
                js.parallelism = Some(1);
            }
            if let Some(s) = &mut js.template.spec {
                default_pod_spec(s);
            }
        }
    }

    fn prepare_for_create(&mut self) {
        self.status = None;
    }

    fn validate(&self, errs: &mut Vec<FieldError>) {
        let path = FieldPath::new("spec");
        let spec = &self.spec;
        if spec.schedule.trim().is_empty() {
            errs.push(FieldError::required(&path.key("schedule"), ""));
        } else if !is_cron_schedule(&spec.schedule) {
            errs.push(FieldError::invalid(&path.key("schedule"), json!(spec.schedule), "unparseable cron schedule"));
        } else if spec.time_zone.is_some() && spec.schedule.contains("TZ") {
            errs.push(FieldError::invalid(
                &path.key("schedule"),
                json!(spec.schedule),
                "cannot use both timeZone field and TZ or CRON_TZ in schedule",
            ));
        }
        if let Some(tz) = &spec.time_zone
            && jiff::tz::TimeZone::get(tz).is_err()
        {
            errs.push(FieldError::invalid(&path.key("timeZone"), json!(tz), &format!("unknown time zone {tz}")));
        }
        if let Some(p) = &spec.concurrency_policy {
            const POLICIES: [&str; 3] = ["Allow", "Forbid", "Replace"];
            if !POLICIES.contains(&p.as_str()) {
                errs.push(FieldError::not_supported(&path.key("concurrencyPolicy"), json!(p), &POLICIES));
            }
        }
    }
}

/// Five fields, or one of the `@hourly`-style macros, as upstream's cron parser accepts.
fn is_cron_schedule(s: &str) -> bool {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix("TZ=").or_else(|| s.strip_prefix("CRON_TZ=")) {
        return rest.split_once(' ').is_some_and(|(_, sched)| is_cron_schedule(sched));
    }
    if s.starts_with('@') {
        return matches!(s, "@yearly" | "@annually" | "@monthly" | "@weekly" | "@daily" | "@midnight" | "@hourly")
            || s.starts_with("@every ");
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    fields.len() == 5
        && fields
            .iter()
            .all(|f| f.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | '/' | ',' | '-' | '?')))
}

#[cfg(test)]
mod tests {
    use super::is_cron_schedule;

    #[test]
    fn cron_schedules_need_five_fields_or_a_macro() {
        assert!(is_cron_schedule("*/5 * * * *"));
        assert!(is_cron_schedule("@hourly"));
        assert!(is_cron_schedule("0 0 * * MON-FRI"));
        assert!(!is_cron_schedule("* * *"));
        assert!(!is_cron_schedule("@sometimes"));
    }
}
