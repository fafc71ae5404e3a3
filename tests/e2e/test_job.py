"""The Job and TTL-after-finished controllers on a cluster of simulated nodes: pods run to
completion (or fail) through the sim.tugboat.dev/exit-code and run-seconds annotations, and
the Job's status, conditions, events and pods are what a user of upstream Kubernetes sees."""

import json
import time

import pytest

from support import unique_name, wait_for

TIMEOUT = 60
EXIT_CODE = "sim.tugboat.dev/exit-code"
RUN_SECONDS = "sim.tugboat.dev/run-seconds"
TRACKING = "batch.kubernetes.io/job-tracking"
INDEX = "batch.kubernetes.io/job-completion-index"


@pytest.fixture
def ns(sim_cluster):
    name = unique_name("job")
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    sim_cluster.server.create("/api/v1/namespaces", body)
    yield name
    sim_cluster.server.request("DELETE", f"/api/v1/namespaces/{name}")


def job(name, *, exit_code=0, run_seconds=0, restart="Never", **spec):
    annotations = {RUN_SECONDS: str(run_seconds)}
    if exit_code is not None:
        annotations[EXIT_CODE] = str(exit_code)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "metadata": {"annotations": annotations},
                "spec": {"restartPolicy": restart, "containers": [{"name": "main", "image": "busybox"}]},
            },
            **spec,
        },
    }


def create(cluster, ns, body):
    return cluster.server.create(f"/apis/batch/v1/namespaces/{ns}/jobs", body)


def get_job(cluster, ns, name):
    r = cluster.server.request("GET", f"/apis/batch/v1/namespaces/{ns}/jobs/{name}")
    return r.json() if r.status == 200 else None


def patch_job(cluster, ns, name, patch):
    r = cluster.server.request(
        "PATCH", f"/apis/batch/v1/namespaces/{ns}/jobs/{name}", patch, content_type="application/merge-patch+json"
    )
    assert r.status == 200, r


def pods_of(cluster, ns, name):
    selector = f"batch.kubernetes.io/job-name%3D{name}"
    r = cluster.server.request("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector={selector}")
    return r.json()["items"]


def condition(j, type_):
    for c in (j or {}).get("status", {}).get("conditions", []):
        if c["type"] == type_ and c["status"] == "True":
            return c
    return None


def wait_condition(cluster, ns, name, type_, timeout=TIMEOUT):
    return wait_for(
        lambda: (j := get_job(cluster, ns, name)) and condition(j, type_) and j,
        f"job {name} condition {type_}",
        timeout=timeout,
    )


def events(cluster, ns, name):
    items = cluster.server.request("GET", f"/api/v1/namespaces/{ns}/events").json()["items"]
    return [(e["type"], e["reason"], e["message"]) for e in items if e["involvedObject"]["name"] == name]


def test_job_runs_its_completions_in_parallel_and_completes(sim_cluster, ns):
    body = job("pi", completions=3, parallelism=2, run_seconds=1)
    sim_cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(body))
    # At most `parallelism` pods run at once.
    first = wait_for(lambda: get_job(sim_cluster, ns, "pi").get("status", {}).get("active"), "active pods")
    assert first <= 2
    sim_cluster.kubectl("wait", "-n", ns, "--for=condition=complete", "job/pi", "--timeout=60s", timeout=70)
    j = get_job(sim_cluster, ns, "pi")
    status = j["status"]
    assert status["succeeded"] == 3
    assert status.get("failed", 0) == 0
    assert status.get("active", 0) == 0
    assert status["startTime"] and status["completionTime"]
    assert status["uncountedTerminatedPods"] == {}
    assert condition(j, "SuccessCriteriaMet")["reason"] == "CompletionsReached"
    assert condition(j, "Complete")["reason"] == "CompletionsReached"
    pods = pods_of(sim_cluster, ns, "pi")
    assert len(pods) == 3
    for p in pods:
        assert p["status"]["phase"] == "Succeeded"
        assert TRACKING not in p["metadata"].get("finalizers", [])
        assert p["metadata"]["ownerReferences"][0]["kind"] == "Job"
        assert p["metadata"]["generateName"] == "pi-"
    reasons = [r for _, r, _ in events(sim_cluster, ns, "pi")]
    assert reasons.count("SuccessfulCreate") == 3
    assert "Completed" in reasons
    got = sim_cluster.kubectl("get", "-n", ns, "job", "pi").stdout
    assert "Complete" in got and "3/3" in got


def test_kubectl_create_job_runs_a_pod_until_it_succeeds(sim_cluster, ns):
    sim_cluster.kubectl("create", "job", "hello", "-n", ns, "--image=busybox", "--", "echo", "hi")
    pod = wait_for(lambda: pods_of(sim_cluster, ns, "hello"), "the job's pod")[0]
    labels = pod["metadata"]["labels"]
    assert labels["batch.kubernetes.io/job-name"] == "hello"
    assert labels["job-name"] == "hello"
    assert TRACKING in pod["metadata"]["finalizers"]
    # Without an exit code the simulated container keeps running: the job stays active.
    # The job's status appears with the controller's first write: until then there is none.
    wait_for(lambda: get_job(sim_cluster, ns, "hello").get("status", {}).get("ready") == 1, "a ready pod")
    assert get_job(sim_cluster, ns, "hello")["status"]["active"] == 1
    sim_cluster.kubectl("annotate", "-n", ns, "pod", pod["metadata"]["name"], f"{EXIT_CODE}=0")
    sim_cluster.kubectl("wait", "-n", ns, "--for=condition=complete", "job/hello", "--timeout=60s", timeout=70)
    assert get_job(sim_cluster, ns, "hello")["status"]["succeeded"] == 1


def test_a_failing_job_stops_at_its_backoff_limit(sim_cluster, ns):
    create(sim_cluster, ns, job("fail0", exit_code=1, backoffLimit=0))
    create(sim_cluster, ns, job("fail1", exit_code=1, backoffLimit=1))
    j = wait_condition(sim_cluster, ns, "fail0", "Failed")
    assert condition(j, "Failed")["reason"] == "BackoffLimitExceeded"
    assert condition(j, "Failed")["message"] == "Job has reached the specified backoff limit"
    assert condition(j, "FailureTarget")["reason"] == "BackoffLimitExceeded"
    assert condition(j, "Complete") is None
    assert j["status"]["failed"] == 1 and j["status"].get("succeeded", 0) == 0
    assert len(pods_of(sim_cluster, ns, "fail0")) == 1
    assert ("Warning", "BackoffLimitExceeded", "Job has reached the specified backoff limit") in events(
        sim_cluster, ns, "fail0"
    )
    # With one retry allowed, the replacement waits out the 10 s backoff after the failure.
    j = wait_condition(sim_cluster, ns, "fail1", "Failed", timeout=45)
    assert j["status"]["failed"] == 2
    pods = sorted(pods_of(sim_cluster, ns, "fail1"), key=lambda p: p["metadata"]["creationTimestamp"])
    assert len(pods) == 2
    first_end = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]
    second_start = pods[1]["metadata"]["creationTimestamp"]
    gap = _seconds(second_start) - _seconds(first_end)
    assert gap >= 9, f"replacement created {gap}s after the failure"


def _seconds(ts: str) -> float:
    return time.mktime(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ"))


def test_active_deadline_fails_the_job_and_stops_its_pods(sim_cluster, ns):
    create(sim_cluster, ns, job("slow", exit_code=None, activeDeadlineSeconds=2, parallelism=2, completions=2))
    j = wait_condition(sim_cluster, ns, "slow", "Failed", timeout=30)
    failed = condition(j, "Failed")
    assert failed["reason"] == "DeadlineExceeded"
    assert failed["message"] == "Job was active longer than specified deadline"
    assert j["status"].get("active", 0) == 0
    # The running pods were stopped and counted as failed.
    assert j["status"]["failed"] == 2
    wait_for(lambda: not pods_of(sim_cluster, ns, "slow"), "the job's pods to go")


def test_indexed_job_runs_each_index_once(sim_cluster, ns):
    create(sim_cluster, ns, job("idx", completions=3, parallelism=3, completionMode="Indexed"))
    j = wait_condition(sim_cluster, ns, "idx", "Complete")
    assert j["status"]["completedIndexes"] == "0-2"
    assert j["status"]["succeeded"] == 3
    pods = pods_of(sim_cluster, ns, "idx")
    indexes = sorted(int(p["metadata"]["annotations"][INDEX]) for p in pods)
    assert indexes == [0, 1, 2]
    for p in pods:
        ix = p["metadata"]["annotations"][INDEX]
        assert p["metadata"]["labels"][INDEX] == ix
        assert p["metadata"]["name"].startswith(f"idx-{ix}-")
        assert p["spec"]["hostname"] == f"idx-{ix}"
        env = p["spec"]["containers"][0]["env"]
        [index_env] = [e for e in env if e["name"] == "JOB_COMPLETION_INDEX"]
        assert index_env["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.annotations['{INDEX}']"


def test_pod_failure_policy_fails_the_job_on_an_exit_code(sim_cluster, ns):
    policy = {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}}]}
    create(sim_cluster, ns, job("pfp", exit_code=42, backoffLimit=6, podFailurePolicy=policy))
    j = wait_condition(sim_cluster, ns, "pfp", "Failed")
    failed = condition(j, "Failed")
    assert failed["reason"] == "PodFailurePolicy"
    assert "failed with exit code 42 matching FailJob rule at index 0" in failed["message"]
    # No retry despite backoffLimit 6.
    assert j["status"]["failed"] == 1
    assert len(pods_of(sim_cluster, ns, "pfp")) == 1
    assert j["spec"]["podReplacementPolicy"] == "Failed"


def test_suspend_deletes_active_pods_and_resume_restarts_them(sim_cluster, ns):
    create(sim_cluster, ns, job("susp", exit_code=None, suspend=True))
    j = wait_condition(sim_cluster, ns, "susp", "Suspended")
    assert condition(j, "Suspended")["reason"] == "JobSuspended"
    assert pods_of(sim_cluster, ns, "susp") == []
    patch_job(sim_cluster, ns, "susp", {"spec": {"suspend": False}})
    wait_for(lambda: get_job(sim_cluster, ns, "susp").get("status", {}).get("ready") == 1, "a running pod after resuming")
    j = get_job(sim_cluster, ns, "susp")
    resumed = [c for c in j["status"]["conditions"] if c["type"] == "Suspended"][0]
    assert (resumed["status"], resumed["reason"]) == ("False", "JobResumed")
    # Suspending a running job deletes its pod, which is not counted as a failure.
    patch_job(sim_cluster, ns, "susp", {"spec": {"suspend": True}})
    wait_for(lambda: not pods_of(sim_cluster, ns, "susp"), "the pod to be deleted")
    j = wait_for(lambda: (j := get_job(sim_cluster, ns, "susp")) and condition(j, "Suspended") and j, "suspended again")
    assert j["status"].get("active", 0) == 0
    assert j["status"].get("failed", 0) == 0
    reasons = [r for _, r, _ in events(sim_cluster, ns, "susp")]
    assert "Suspended" in reasons and "Resumed" in reasons and "SuccessfulDelete" in reasons


def test_finished_jobs_are_deleted_after_their_ttl(sim_cluster, ns):
    create(sim_cluster, ns, job("short", ttlSecondsAfterFinished=2))
    create(sim_cluster, ns, job("kept"))
    wait_condition(sim_cluster, ns, "short", "Complete")
    wait_for(lambda: get_job(sim_cluster, ns, "short") is None, "the job to be deleted after its TTL", timeout=30)
    wait_for(lambda: not pods_of(sim_cluster, ns, "short"), "its pods to be deleted")
    wait_condition(sim_cluster, ns, "kept", "Complete")
    assert get_job(sim_cluster, ns, "kept") is not None


def test_deleting_a_running_job_deletes_its_pods(sim_cluster, ns):
    create(sim_cluster, ns, job("gone", exit_code=None))
    wait_for(lambda: pods_of(sim_cluster, ns, "gone"), "a pod")
    sim_cluster.kubectl("delete", "-n", ns, "job", "gone")
    # The tracking finalizer of the orphaned pod is released, so the pod goes.
    wait_for(lambda: not pods_of(sim_cluster, ns, "gone"), "the pod to go with its job")


def annotate_index(cluster, ns, job_name, index, exit_code):
    pod = wait_for(
        lambda: [p for p in pods_of(cluster, ns, job_name) if p["metadata"]["annotations"].get(INDEX) == str(index)],
        f"the pod of index {index}",
    )[0]
    cluster.kubectl("annotate", "-n", ns, "pod", pod["metadata"]["name"], f"{EXIT_CODE}={exit_code}")


def test_backoff_limit_per_index_fails_only_that_index(sim_cluster, ns):
    create(
        sim_cluster,
        ns,
        job("perix", exit_code=None, completions=3, parallelism=3, completionMode="Indexed", backoffLimitPerIndex=0),
    )
    wait_for(lambda: len(pods_of(sim_cluster, ns, "perix")) == 3, "one pod per index")
    annotate_index(sim_cluster, ns, "perix", 1, 1)
    annotate_index(sim_cluster, ns, "perix", 0, 0)
    annotate_index(sim_cluster, ns, "perix", 2, 0)
    j = wait_condition(sim_cluster, ns, "perix", "Failed")
    assert condition(j, "Failed")["reason"] == "FailedIndexes"
    assert j["status"]["failedIndexes"] == "1"
    assert j["status"]["completedIndexes"] == "0,2"
    assert (j["status"]["succeeded"], j["status"]["failed"]) == (2, 1)
    # The failed index was not retried.
    assert len(pods_of(sim_cluster, ns, "perix")) == 3


def test_success_policy_completes_the_job_early(sim_cluster, ns):
    policy = {"rules": [{"succeededIndexes": "0"}]}
    create(
        sim_cluster,
        ns,
        job("leader", exit_code=None, completions=3, parallelism=3, completionMode="Indexed", successPolicy=policy),
    )
    wait_for(lambda: len(pods_of(sim_cluster, ns, "leader")) == 3, "one pod per index")
    annotate_index(sim_cluster, ns, "leader", 0, 0)
    j = wait_condition(sim_cluster, ns, "leader", "Complete")
    assert condition(j, "SuccessCriteriaMet")["reason"] == "SuccessPolicy"
    assert condition(j, "Complete")["reason"] == "SuccessPolicy"
    assert j["status"]["completedIndexes"] == "0"
    assert j["status"]["succeeded"] == 1
    # The other indexes' pods were stopped.
    wait_for(lambda: len(pods_of(sim_cluster, ns, "leader")) == 1, "the lingering pods to go")


def test_a_retried_index_carries_its_failure_count(sim_cluster, ns):
    create(
        sim_cluster,
        ns,
        job("retry", exit_code=1, completions=1, completionMode="Indexed", backoffLimitPerIndex=1),
    )
    j = wait_condition(sim_cluster, ns, "retry", "Failed", timeout=45)
    assert condition(j, "Failed")["reason"] == "FailedIndexes"
    assert (j["status"]["failed"], j["status"]["failedIndexes"]) == (2, "0")
    # backoffLimitPerIndex leaves the Job-wide limit out of the way.
    assert j["spec"]["backoffLimit"] == 2147483647
    pods = sorted(pods_of(sim_cluster, ns, "retry"), key=lambda p: p["metadata"]["creationTimestamp"])
    counts = [p["metadata"]["annotations"].get("batch.kubernetes.io/job-index-failure-count") for p in pods]
    assert counts == ["0", "1"]


def test_container_restarts_count_against_the_backoff_limit(sim_cluster, ns):
    # restartPolicy OnFailure: the pod is never Failed, its restarts are what count.
    create(sim_cluster, ns, job("restarts", exit_code=1, restart="OnFailure", backoffLimit=1))
    j = wait_condition(sim_cluster, ns, "restarts", "Failed", timeout=45)
    assert condition(j, "Failed")["reason"] == "BackoffLimitExceeded"
    # The restarting pod was stopped.
    wait_for(lambda: not pods_of(sim_cluster, ns, "restarts"), "the pod to be deleted")


def pods_labelled(cluster, ns, selector):
    r = cluster.server.request("GET", f"/api/v1/namespaces/{ns}/pods?labelSelector={selector}")
    return r.json()["items"]


def manual_job(name, app):
    """A Job with a hand-written selector `app=<app>` whose pods run until annotated."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "manualSelector": True,
            "selector": {"matchLabels": {"app": app}},
            "completions": 1,
            "parallelism": 1,
            "template": {
                "metadata": {"labels": {"app": app}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox"}]},
            },
        },
    }


def controller_uid(pod):
    return next((r["uid"] for r in pod["metadata"].get("ownerReferences", []) if r.get("controller")), None)


def test_a_matching_orphan_pod_is_adopted_and_counted(sim_cluster, ns):
    stray = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "stray", "labels": {"app": "adopt"}},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox"}]},
    }
    sim_cluster.server.create(f"/api/v1/namespaces/{ns}/pods", stray)
    path = f"/api/v1/namespaces/{ns}/pods/stray"
    wait_for(lambda: sim_cluster.server.request("GET", path).json()["status"].get("phase") == "Running", "stray runs")

    uid = create(sim_cluster, ns, manual_job("adopter", "adopt"))["metadata"]["uid"]
    pod = wait_for(
        lambda: (p := sim_cluster.server.request("GET", path).json()) and controller_uid(p) == uid and p,
        "the orphan pod adopted by the job",
    )
    (ref,) = pod["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["blockOwnerDeletion"]) == ("Job", "adopter", True)
    assert TRACKING in pod["metadata"]["finalizers"]
    # The adopted pod fills the Job's only slot: no pod of its own is created.
    wait_for(lambda: get_job(sim_cluster, ns, "adopter").get("status", {}).get("active") == 1, "the adopted pod active")
    sim_cluster.kubectl("annotate", "-n", ns, "pod", "stray", f"{EXIT_CODE}=0")
    sim_cluster.kubectl("wait", "-n", ns, "--for=condition=complete", "job/adopter", "--timeout=60s", timeout=70)
    assert get_job(sim_cluster, ns, "adopter")["status"]["succeeded"] == 1
    assert [p["metadata"]["name"] for p in pods_labelled(sim_cluster, ns, "app%3Dadopt")] == ["stray"]
    assert "SuccessfulCreate" not in [r for _, r, _ in events(sim_cluster, ns, "adopter")]


def test_a_pod_whose_labels_stop_matching_is_released_and_replaced(sim_cluster, ns):
    uid = create(sim_cluster, ns, manual_job("releaser", "rel"))["metadata"]["uid"]
    (pod,) = wait_for(lambda: pods_labelled(sim_cluster, ns, "app%3Drel"), "the job's pod")
    name = pod["metadata"]["name"]
    assert controller_uid(pod) == uid
    sim_cluster.kubectl("label", "-n", ns, "pod", name, "app=elsewhere", "--overwrite")

    path = f"/api/v1/namespaces/{ns}/pods/{name}"
    released = wait_for(
        lambda: (p := sim_cluster.server.request("GET", path).json()) and not p["metadata"].get("ownerReferences") and p,
        "the relabelled pod released",
    )
    assert TRACKING not in released["metadata"].get("finalizers", [])
    (replacement,) = wait_for(
        lambda: [p for p in pods_labelled(sim_cluster, ns, "app%3Drel") if p["metadata"]["name"] != name],
        "a replacement pod",
    )
    assert controller_uid(replacement) == uid
