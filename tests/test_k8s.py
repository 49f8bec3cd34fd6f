"""k8s/rayjob.yaml, the KubeRay twin of cluster.yaml. No Kubernetes cluster runs here: the
manifest is parsed, its fields checked, and its entrypoint read by the CLI's own parser."""

from __future__ import annotations

import re
import shlex

import yaml

from rayinfer.jobs.cli import build_parser, config_from_args
from tests.conftest import ROOT


def _manifest() -> dict:
    return yaml.safe_load((ROOT / "k8s/rayjob.yaml").read_text())


def test_the_rayjob_has_the_fields_a_batch_job_needs():
    job = _manifest()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["submissionMode"] == "K8sJobMode" and spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] > 0 and spec["backoffLimit"] >= 0
    cluster = spec["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    (gpu,) = cluster["workerGroupSpecs"]
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1
    (worker,) = gpu["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_no_credentials_in_the_manifest():
    text = (ROOT / "k8s/rayjob.yaml").read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)
    for pod in [_manifest()["spec"]["rayClusterSpec"]["headGroupSpec"],
                *_manifest()["spec"]["rayClusterSpec"]["workerGroupSpecs"]]:
        pod_spec = pod["template"]["spec"]
        assert pod_spec["serviceAccountName"]
        for container in pod_spec["containers"]:
            assert "env" not in container  # values would sit here; secrets come through envFrom
            assert all("secretRef" in source for source in container.get("envFrom", []))


def test_the_entrypoint_is_a_rayinfer_run_the_cli_accepts():
    argv = shlex.split(_manifest()["spec"]["entrypoint"])
    assert argv[:3] == ["rayinfer", "run", "coco"]
    cfg = config_from_args(build_parser().parse_args(argv[1:]))
    assert cfg.runtime_option("providers") == ("cuda",) and cfg.cpus_per_actor == 8 and cfg.resume
    assert cfg.output.startswith("s3://") and cfg.data_root.startswith("s3://") and cfg.model.startswith("s3://")
    # the same options cluster.yaml's submit line gives the GPU workers
    yaml_text = (ROOT / "cluster.yaml").read_text()
    assert "--providers cuda --cpus-per-actor 8" in yaml_text
