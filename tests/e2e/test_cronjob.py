"""The CronJob controller on a cluster of simulated nodes: Jobs start at their scheduled
minute with upstream's names and annotation, a Forbid CronJob with a running Job starts
none, finished Jobs beyond the history limits are deleted, kubectl can start a Job from a
CronJob, and the API rejects schedules it cannot parse.

Only one test waits for a scheduled minute (at most ~75 s); the schedule arithmetic itself is
unit-tested in crates/controllers/src/cronjob/ and
crates/api/src/cron.rs."""

import datetime
import json
import time

import pytest

from support import unique_name, wait_for

EXIT_CODE = "sim.tugboat.dev/exit-code"
SCHEDULED = "batch.kubernetes.io/cronjob-scheduled-timestamp"


@pytest.fixture
def ns(sim_cluster):
    name = unique_name("cronjob")
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    sim_cluster.server.create("/api/v1/namespaces", body)
    yield name
    sim_cluster.server.request("DELETE", f"/api/v1/namespaces/{name}")


def job_spec(exit_code):
    annotations = {EXIT_CODE: str(exit_code)} if exit_code is not None else {}
    return {
        "backoffLimit": 0,
        "template": {
            "metadata": {"annotations": annotations},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox"}]},
        },
    }


def cronjob(name, *, exit_code=0, schedule="*/1 * * * *", **spec):
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name},
        "spec": {
            "schedule": schedule,
            "jobTemplate": {"metadata": {"labels": {"cron": name}}, "spec": job_spec(exit_code)},
            **spec,
        },
    }


def get(cluster, path):
    r = cluster.server.request("GET", path)
    return r.json() if r.status == 200 else None


def jobs_of(cluster, ns, cj):
    items = get(cluster, f"/apis/batch/v1/namespaces/{ns}/jobs")["items"]
    uid = cj["metadata"]["uid"]
    return [j for j in items if any(r["uid"] == uid for r in j["metadata"].get("ownerReferences", []))]


def finished(j, type_):
    return any(c["type"] == type_ and c["status"] == "True" for c in j.get("status", {}).get("conditions", []))


def reasons(cluster, ns, name):
    items = get(cluster, f"/api/v1/namespaces/{ns}/events")["items"]
    return [e["reason"] for e in items if e["involvedObject"]["name"] == name]


def owned_job(name, cj, exit_code):
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "name": cj["metadata"]["name"],
                    "uid": cj["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": job_spec(exit_code),
    }


def give_running_job(cluster, ns, cj, name):
    """Makes `cj` already run a Job that never ends (as if started at an earlier minute)."""
    running = cluster.server.create(f"/apis/batch/v1/namespaces/{ns}/jobs", owned_job(name, cj, None))
    ref = {"apiVersion": "batch/v1", "kind": "Job", "name": name, "namespace": ns, "uid": running["metadata"]["uid"]}
    path = f"/apis/batch/v1/namespaces/{ns}/cronjobs/{cj['metadata']['name']}/status"
    patch = {"status": {"active": [ref]}}
    r = cluster.server.request("PATCH", path, patch, content_type="application/merge-patch+json")
    assert r.status == 200, r


def test_cronjob_starts_a_job_each_minute_and_forbid_or_replace_a_busy_one(sim_cluster, ns):
    base = f"/apis/batch/v1/namespaces/{ns}/cronjobs"
    every = sim_cluster.server.create(base, cronjob("every"))
    busy = sim_cluster.server.create(base, cronjob("busy", exit_code=None, concurrencyPolicy="Forbid"))
    repl = sim_cluster.server.create(base, cronjob("repl", exit_code=None, concurrencyPolicy="Replace"))
    give_running_job(sim_cluster, ns, busy, "busy-running")
    give_running_job(sim_cluster, ns, repl, "repl-running")

    [job] = wait_for(lambda: jobs_of(sim_cluster, ns, every), "a job started on schedule", timeout=75)
    name = job["metadata"]["name"]
    minutes = int(name.removeprefix("every-"))
    scheduled = job["metadata"]["annotations"][SCHEDULED]
    assert scheduled.endswith("Z")
    at = datetime.datetime.strptime(scheduled, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    assert int(at.timestamp()) == minutes * 60
    assert job["metadata"]["labels"]["cron"] == "every"
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["controller"]) == ("CronJob", True)

    cj = wait_for(
        lambda: (c := get(sim_cluster, f"{base}/every")) and c.get("status", {}).get("lastSuccessfulTime") and c,
        "the job to complete and be seen",
        timeout=30,
    )
    assert cj["status"]["lastScheduleTime"] == scheduled
    assert not cj["status"].get("active")
    wait_for(lambda: {"SuccessfulCreate", "SawCompletedJob"} <= set(reasons(sim_cluster, ns, "every")), "events")

    # The same minute found "busy" still running its Job: Forbid started nothing.
    wait_for(lambda: "JobAlreadyActive" in reasons(sim_cluster, ns, "busy"), "the Forbid event", timeout=15)
    assert [j["metadata"]["name"] for j in jobs_of(sim_cluster, ns, busy)] == ["busy-running"]
    active = get(sim_cluster, f"{base}/busy")["status"]["active"]
    assert [a["name"] for a in active] == ["busy-running"]

    # The same minute replaced "repl"'s running Job with a new one.
    new_name = f"repl-{minutes}"
    wait_for(
        lambda: [j["metadata"]["name"] for j in jobs_of(sim_cluster, ns, repl)] == [new_name],
        "the running job to be replaced",
        timeout=15,
    )
    active = get(sim_cluster, f"{base}/repl")["status"]["active"]
    assert [a["name"] for a in active] == [new_name]
    assert "SuccessfulDelete" in reasons(sim_cluster, ns, "repl")


def test_history_limits_delete_the_oldest_finished_jobs(sim_cluster, ns):
    base = f"/apis/batch/v1/namespaces/{ns}/cronjobs"
    cj = sim_cluster.server.create(
        base, cronjob("hist", suspend=True, successfulJobsHistoryLimit=1, failedJobsHistoryLimit=1)
    )
    jobs = f"/apis/batch/v1/namespaces/{ns}/jobs"
    # One second apart, so that their start times (in seconds) order them.
    for i in range(1, 4):
        sim_cluster.server.create(jobs, owned_job(f"hist-ok-{i}", cj, 0))
        if i < 3:
            sim_cluster.server.create(jobs, owned_job(f"hist-bad-{i}", cj, 1))
        time.sleep(1.1)

    def remaining():
        names = sorted(j["metadata"]["name"] for j in jobs_of(sim_cluster, ns, cj))
        return names if len(names) == 2 else None

    assert wait_for(remaining, "only the newest finished jobs to remain") == ["hist-bad-2", "hist-ok-3"]
    assert reasons(sim_cluster, ns, "hist").count("SuccessfulDelete") == 3


@pytest.mark.parametrize("version", ["1.36", "1.27"])
def test_kubectl_creates_a_job_from_a_cronjob(sim_cluster, ns, version):
    sim_cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(cronjob("tmpl", suspend=True)), version=version)
    sim_cluster.kubectl("create", "job", "manual", "-n", ns, "--from=cronjob/tmpl", version=version)
    j = get(sim_cluster, f"/apis/batch/v1/namespaces/{ns}/jobs/manual")
    assert j["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"] == "manual"
    assert j["metadata"]["ownerReferences"][0]["name"] == "tmpl"
    sim_cluster.kubectl(
        "wait", "-n", ns, "--for=condition=complete", "job/manual", "--timeout=60s", timeout=70, version=version
    )
    # A suspended CronJob starts nothing by itself.
    cj = get(sim_cluster, f"/apis/batch/v1/namespaces/{ns}/cronjobs/tmpl")
    assert [x["metadata"]["name"] for x in jobs_of(sim_cluster, ns, cj)] == ["manual"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"schedule": "not a schedule"}, "spec.schedule"),
        ({"schedule": "* * *"}, "spec.schedule"),
        # On create upstream refuses any zone in the schedule, with or without timeZone.
        ({"schedule": "TZ=UTC */5 * * * *"}, "cannot use TZ or CRON_TZ in schedule, use timeZone field instead"),
        ({"schedule": "TZ=UTC */5 * * * *", "timeZone": "Europe/Paris"}, "cannot use TZ or CRON_TZ in schedule"),
        ({"schedule": "*/5 * * * *", "timeZone": "Mars/Olympus_Mons"}, "spec.timeZone"),
    ],
)
def test_the_api_rejects_bad_schedules(sim_cluster, ns, spec, message):
    body = cronjob("bad")
    body["spec"].update(spec)
    r = sim_cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(body), check=False)
    assert r.returncode != 0
    assert "is invalid" in r.stderr and message in r.stderr, r.stderr


@pytest.mark.parametrize("version", ["1.36", "1.27"])
def test_kubectl_create_cronjob_with_an_out_of_range_minute_fails_with_the_parsers_message(sim_cluster, ns, version):
    r = sim_cluster.kubectl(
        "create", "cronjob", "x", "-n", ns, "--image=busybox", "--schedule=61 * * * *", check=False, version=version
    )
    assert r.returncode != 0
    assert (
        'CronJob.batch "x" is invalid: spec.schedule: Invalid value: "61 * * * *": '
        "end of range (61) above maximum (59): 61" in r.stderr
    ), r.stderr
    missing = sim_cluster.server.request("GET", f"/apis/batch/v1/namespaces/{ns}/cronjobs/x")
    assert missing.status == 404


def test_a_time_zone_is_accepted_and_stamped_on_the_cronjob(sim_cluster, ns):
    body = cronjob("tz", schedule="0 9 * * *", timeZone="Asia/Tokyo")
    sim_cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(body))
    out = sim_cluster.kubectl("get", "-n", ns, "cronjob", "tz", "-o", "jsonpath={.spec.timeZone}").stdout
    assert out == "Asia/Tokyo"
