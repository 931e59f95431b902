"""deploy/kubernetes: the PrometheusRule is generated from grafana/alerts.yml and cannot drift from it;
the built-in objects pass the Kubernetes schemas; the Deployment is hardened, probed and sized from
the benchmark; the consumer accepts its environment and pipeline as they are."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from consumer.environment import SECRET_FILE_ENV, env_names
from consumer.settings import Settings, load_settings
from devstack.kubernetes import (
    ALERTS,
    BASE,
    CUSTOM_KINDS,
    DEFAULT_RUNBOOK_BASE,
    RULE_FILE,
    alert_rules,
    custom_resource_problems,
    one,
    prometheus_rule,
    render,
    render_without_kustomize,
    rule_drift,
    runbook_base_of,
)
from pipeline.spec_loader import builtin_dir, load_pipeline

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(objects, "Deployment")["spec"]["template"]["spec"]
    return spec


def test_the_committed_prometheus_rule_is_what_alerts_yml_generates() -> None:
    committed = RULE_FILE.read_text()
    assert rule_drift(ALERTS.read_text(), committed) == [], "run `python -m devstack.kubernetes rule --write`"
    assert committed == prometheus_rule(ALERTS.read_text(), runbook_base_of(committed) or DEFAULT_RUNBOOK_BASE)


def test_a_changed_alert_is_drift() -> None:
    changed = ALERTS.read_text().replace("microbatch_lag_seconds) > 300", "microbatch_lag_seconds) > 900")
    assert changed != ALERTS.read_text()
    assert rule_drift(changed, RULE_FILE.read_text()) != []


def test_the_generator_takes_the_runbook_base_and_keeps_everything_else() -> None:
    base = "https://git.example.test/acme/microbatch/blob/v0.1.0"
    rule = yaml.safe_load(prometheus_rule(ALERTS.read_text(), base))
    generated = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    expected = alert_rules(ALERTS.read_text())
    assert [r["annotations"]["runbook_url"] for r in generated] == [
        f"{base}/docs/OPERATIONS.md#{r['alert'].lower()}" for r in expected
    ]
    for ours, theirs in zip(generated, expected, strict=True):
        ours["annotations"].pop("runbook_url")
        theirs["annotations"].pop("runbook_url")
    assert generated == expected
    assert runbook_base_of(prometheus_rule(ALERTS.read_text(), base)) == base


def test_the_built_in_objects_pass_the_kubernetes_schemas(objects: list[dict[str, Any]]) -> None:
    builtin = [o for o in objects if o["kind"] not in CUSTOM_KINDS]
    assert sorted(o["kind"] for o in builtin) == [
        "ConfigMap",
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
    ]
    for version in KUBERNETES_VERSIONS:
        for manifest in builtin:
            kubernetes_validate.validate(manifest, version, strict=True)
    broken = copy.deepcopy(one(builtin, "Deployment"))
    broken["spec"]["template"]["spec"]["enableServiceLink"] = False  # a typo strict validation must catch
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_the_custom_resources_and_the_references_between_objects_check_out(objects: list[dict[str, Any]]) -> None:
    assert custom_resource_problems(objects) == []
    wrong = copy.deepcopy(objects)
    one(wrong, "PodMonitor")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "other"
    one(wrong, "Service")["spec"]["ports"][0]["targetPort"] = "http"
    one(wrong, "PrometheusRule")["spec"]["groups"][0]["rules"][0]["annotations"]["runbook_url"] = "runbook.html"
    one(wrong, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] = "x"
    one(wrong, "PodDisruptionBudget")["spec"]["maxUnavailable"] = "100%"
    problems = custom_resource_problems(wrong)
    assert len(problems) == 5, problems


def test_the_fallback_renderer_reads_the_same_objects_as_kustomize(objects: list[dict[str, Any]]) -> None:
    def shape(items: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
        return sorted(
            (o["kind"], re.sub(r"-[a-z0-9]{10}$", "", o["metadata"]["name"]), json.dumps(o.get("data"), sort_keys=True))
            for o in items
        )

    ours = render_without_kustomize(BASE)
    assert [o["kind"] for o in ours].count("ConfigMap") == 2
    if shutil.which("kubectl") is not None:
        assert shape(ours) == shape(objects)


def test_the_pod_is_hardened(pod: dict[str, Any]) -> None:
    assert pod["enableServiceLinks"] is False
    assert pod["automountServiceAccountToken"] is False
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and isinstance(security["runAsUser"], int) and security["runAsUser"] > 0
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }  # fmt: skip
    assert f"USER {security['runAsUser']}:" in (ROOT / "Dockerfile").read_text(), "runAsUser is the image's own user"


def test_probes_port_and_grace_period(objects: list[dict[str, Any]], pod: dict[str, Any]) -> None:
    (container,) = pod["containers"]
    assert container["ports"] == [{"name": "metrics", "containerPort": 9108, "protocol": "TCP"}]
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes == {
        "startupProbe": {"path": "/healthz", "port": "metrics"},
        "livenessProbe": {"path": "/healthz", "port": "metrics"},
        "readinessProbe": {"path": "/readyz", "port": "metrics"},
    }
    env = settings_env(objects)
    assert env.get("MICROBATCH_METRICS_PORT", "9108") == "9108"
    shutdown = float(env.get("MICROBATCH_SHUTDOWN_TIMEOUT_S", Settings.model_fields["shutdown_timeout_s"].default))
    assert pod["terminationGracePeriodSeconds"] > shutdown + 5


def test_resources_come_from_the_benchmark_of_record(pod: dict[str, Any]) -> None:
    bench = json.loads((ROOT / "bench" / "results" / "latest.json").read_text())
    measured = bench["variants"]["microbatch"]
    cores = measured["cpu_us_per_event"]["consumer"] * measured["events_per_s"] / 1e6
    peak_rss = bench["rss_drain"]["peak_rss_bytes"]
    resources = pod["containers"][0]["resources"]
    requests, limits = resources["requests"], resources["limits"]
    assert cores <= cpu(requests["cpu"]) <= 1.5 * cores, (cores, requests)
    assert cpu(limits["cpu"]) >= 1.5 * cores
    assert peak_rss <= memory(requests["memory"]) <= 1.5 * peak_rss, (peak_rss, requests)
    assert memory(limits["memory"]) >= 2 * peak_rss


def test_the_credentials_come_from_mounted_secrets_that_are_not_committed(
    objects: list[dict[str, Any]], pod: dict[str, Any]
) -> None:
    (container,) = pod["containers"]
    files = {e["name"]: e["value"] for e in container["env"]}
    assert set(files) == set(SECRET_FILE_ENV.values()), "credentials as files, never as plain variables"
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert set(secrets.values()) == {"microbatch-database", "microbatch-kafka"}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"] if m["name"] in secrets}
    assert sorted(str(Path(path).parent) for path in files.values()) == sorted(mounts.values())
    assert all(m.get("readOnly") for m in container["volumeMounts"] if m["name"] in secrets)
    assert not any(o["kind"] == "Secret" for o in objects)
    assert not {"DATABASE_URL", *SECRET_FILE_ENV.values()} & set(settings_env(objects))


def test_the_consumer_reads_exactly_this_environment(objects: list[dict[str, Any]], pod: dict[str, Any],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    env = settings_env(objects)
    names = [*env, *(e["name"] for e in pod["containers"][0]["env"])]
    readable = {var for name in Settings.model_fields for var in env_names(name)} | set(SECRET_FILE_ENV.values())
    assert [name for name in names if name not in readable] == []
    for key in list(os.environ):
        if key.startswith("MICROBATCH_") or key in readable:
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DATABASE_URL", "postgresql://microbatch@db:5432/microbatch")
    for name in SECRET_FILE_ENV.values():
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.pipeline == "/etc/microbatch/pipeline.toml" and settings.metrics_port == 9108


def test_the_pipeline_configmap_is_mounted_where_the_setting_points(
    objects: list[dict[str, Any]], pod: dict[str, Any]
) -> None:
    pipeline_map = next(o for o in objects if o["kind"] == "ConfigMap" and "pipeline.toml" in o["data"])
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == pipeline_map["metadata"]["name"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert f"{mount['mountPath']}/pipeline.toml" == settings_env(objects)["MICROBATCH_PIPELINE"]


def test_the_deployed_pipeline_is_the_built_in_pageviews_pipeline() -> None:
    deployed = BASE / "pipeline.toml"
    assert tomllib.loads(deployed.read_text()) == tomllib.loads((builtin_dir() / "pageviews.toml").read_text())
    assert load_pipeline(deployed).name == "pageviews"


def test_the_readme_explains_the_deployment() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deploying on Kubernetes", 1)[1].split("\n## ", 1)[0]
    for needle in ("kubectl apply -k deploy/kubernetes", "replicas", "/healthz", "/readyz",
                   "terminationGracePeriodSeconds", "microbatch-database"):  # fmt: skip
        assert needle in section, needle


def settings_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    deployment = one(objects, "Deployment")
    (source,) = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    name = source["configMapRef"]["name"]
    maps = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name]
    data: dict[str, str] = maps[0]["data"]
    return data


def cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def memory(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(quantity[:-2]) * units[quantity[-2:]] if quantity[-2:] in units else int(quantity)
