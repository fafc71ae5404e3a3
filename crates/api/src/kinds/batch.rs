//! batch/v1 kinds: Job and CronJob defaults and validation as upstream.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::json;

use super::Kind;
use super::apps::validate_workload;
use super::core::default_pod_spec;
use crate::cron::Schedule;
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
        if spec.schedule.is_empty() {
            errs.push(FieldError::required(&path.key("schedule"), ""));
        } else {
            validate_schedule(&spec.schedule, errs);
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

    /// Upstream grandfathers a `TZ=` schedule written before `spec.timeZone` existed: an update
    /// of a CronJob whose stored schedule mentions `TZ` may keep one, unless it also sets
    /// `timeZone`. `validate` (shared with create) has already refused it, so that error is
    /// taken back here.
    fn validate_update(&self, old: &Self, errs: &mut Vec<FieldError>) {
        if !old.spec.schedule.contains("TZ") {
            return;
        }
        let path = FieldPath::new("spec").key("schedule");
        errs.retain(|e| !(e.field == path.as_str() && e.detail == NO_TZ_IN_SCHEDULE));
        if self.spec.schedule.contains("TZ") && self.spec.time_zone.is_some() {
            errs.push(FieldError::invalid(
                &path,
                json!(self.spec.schedule),
                "cannot use both timeZone field and TZ or CRON_TZ in schedule",
            ));
        }
    }
}

/// Upstream's refusal of a zone inside the schedule of a new CronJob.
const NO_TZ_IN_SCHEDULE: &str = "cannot use TZ or CRON_TZ in schedule, use timeZone field instead";

/// `spec.schedule` as upstream's `validateScheduleFormat` checks it on create: it must parse
/// with robfig's standard parser (whose message is the detail) and must not mention `TZ`
/// (the zone belongs in `spec.timeZone`).
fn validate_schedule(schedule: &str, errs: &mut Vec<FieldError>) {
    let path = FieldPath::new("spec").key("schedule");
    if let Err(e) = Schedule::parse(schedule) {
        errs.push(FieldError::invalid(&path, json!(schedule), &e.to_string()));
    }
    if schedule.contains("TZ") {
        errs.push(FieldError::invalid(&path, json!(schedule), NO_TZ_IN_SCHEDULE));
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec};

    use super::*;

    fn cronjob(schedule: &str, time_zone: Option<&str>) -> CronJob {
        CronJob {
            spec: CronJobSpec { schedule: schedule.into(), time_zone: time_zone.map(Into::into), ..Default::default() },
            ..Default::default()
        }
    }

    fn create_errors(cj: &CronJob) -> Vec<String> {
        let mut errs = Vec::new();
        cj.validate(&mut errs);
        errs.iter().map(|e| format!("{}: {}", e.field, e.body())).collect()
    }

    fn update_errors(new: &CronJob, old: &CronJob) -> Vec<String> {
        let mut errs = Vec::new();
        new.validate(&mut errs);
        new.validate_update(old, &mut errs);
        errs.iter().map(|e| format!("{}: {}", e.field, e.body())).collect()
    }

    #[test]
    fn schedules_the_cron_parser_accepts_are_valid() {
        for s in ["*/5 * * * *", "@hourly", "@every 1h30m", "0 0 * * MON-FRI", "0 9 1-7 * ?"] {
            assert_eq!(create_errors(&cronjob(s, None)), Vec::<String>::new(), "{s}");
        }
    }

    #[test]
    fn an_unparseable_schedule_is_invalid_with_the_parsers_message() {
        assert_eq!(
            create_errors(&cronjob("61 * * * *", None)),
            ["spec.schedule: Invalid value: \"61 * * * *\": end of range (61) above maximum (59): 61"]
        );
        assert_eq!(
            create_errors(&cronjob("* * *", None)),
            ["spec.schedule: Invalid value: \"* * *\": expected exactly 5 fields, found 3: * * *"]
        );
        assert_eq!(
            create_errors(&cronjob("@sometimes", None)),
            ["spec.schedule: Invalid value: \"@sometimes\": unrecognized descriptor: @sometimes"]
        );
    }

    #[test]
    fn a_new_cronjob_cannot_name_its_zone_in_the_schedule() {
        assert_eq!(
            create_errors(&cronjob("TZ=UTC */5 * * * *", None)),
            [
                "spec.schedule: Invalid value: \"TZ=UTC */5 * * * *\": cannot use TZ or CRON_TZ in schedule, use timeZone field instead"
            ]
        );
    }

    #[test]
    fn an_update_may_keep_a_grandfathered_zone_prefix_but_not_with_time_zone() {
        let old = cronjob("TZ=UTC */5 * * * *", None);
        assert_eq!(update_errors(&cronjob("CRON_TZ=UTC 0 * * * *", None), &old), Vec::<String>::new());
        assert_eq!(
            update_errors(&cronjob("TZ=UTC 0 * * * *", Some("Europe/Paris")), &old),
            [
                "spec.schedule: Invalid value: \"TZ=UTC 0 * * * *\": cannot use both timeZone field and TZ or CRON_TZ in schedule"
            ]
        );
        // Without the grandfathered schedule, a zone prefix stays refused on update too.
        let plain = cronjob("*/5 * * * *", None);
        assert_eq!(update_errors(&cronjob("TZ=UTC 0 * * * *", None), &plain).len(), 1);
    }
}
