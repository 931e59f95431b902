"""The Kubernetes base in deploy/kubernetes/: its PrometheusRule, generated from grafana/alerts.yml (the one
source of truth for alerts), and the checks `make check` runs on the rendered manifests.

    python -m devstack.kubernetes rule [--runbook-base URL] [--write]
        The PrometheusRule, with each alert's runbook_url at <URL>/docs/OPERATIONS.md#<alert in lower
        case>: printed, or written to deploy/kubernetes/prometheusrule.yaml.
    python -m devstack.kubernetes render OUTDIR
        Renders the base (kustomize through `kubectl kustomize` when kubectl is installed; otherwise the
        kustomization's resources and ConfigMap generators are read here) and writes
        OUTDIR/kubernetes.yaml (the built-in kinds, for kubernetes-validate) and OUTDIR/rules.yml (the
        PrometheusRule's groups, for `promtool check rules`). The custom resources (PodMonitor,
        PrometheusRule) have no schema in kubernetes-validate: they are checked here, with how the
        objects refer to each other and whether the committed PrometheusRule matches alerts.yml.
        Exits 1 and names each problem when there is one.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "grafana" / "alerts.yml"
BASE = ROOT / "deploy" / "kubernetes"
RULE_FILE = BASE / "prometheusrule.yaml"
DEFAULT_RUNBOOK_BASE = "https://runbooks.example.com/microbatch"
RUNBOOK_PAGE = "docs/OPERATIONS.md"
CUSTOM_KINDS = frozenset({"PodMonitor", "PrometheusRule"})
RULE_HEADER = (
    "# Generated from grafana/alerts.yml by `python -m devstack.kubernetes rule --write` (add --runbook-base\n"
    "# for your runbook's address): do not edit; a test fails when the two differ.\n"
)
Manifest = dict[str, Any]


def runbook_url(base: str, alert: str) -> str:
    """The address of an alert's section in the runbook (its heading is the alert's name)."""
    return f"{base.rstrip('/')}/{RUNBOOK_PAGE}#{alert.lower()}"


def alert_rules(text: str) -> list[dict[str, Any]]:
    """Every rule of an alerts file (Prometheus rule-file format)."""
    groups = yaml.safe_load(text)["groups"]
    return [rule for group in groups for rule in group["rules"]]


def prometheus_rule(alerts_text: str, runbook_base: str = DEFAULT_RUNBOOK_BASE) -> str:
    """The PrometheusRule (prometheus-operator) holding the groups of `alerts_text`, runbook_url set."""
    groups = yaml.safe_load(alerts_text)["groups"]
    for group in groups:
        for rule in group["rules"]:
            if "alert" in rule:
                rule.setdefault("annotations", {})["runbook_url"] = runbook_url(runbook_base, rule["alert"])
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "microbatch",
            "labels": {"app.kubernetes.io/name": "microbatch", "app.kubernetes.io/component": "alerts"},
        },
        "spec": {"groups": groups},
    }
    return RULE_HEADER + yaml.safe_dump(resource, sort_keys=False, allow_unicode=True, width=4096)


def runbook_base_of(rule_text: str) -> str | None:
    """The runbook base a generated PrometheusRule was made with (None: it has no runbook_url)."""
    found = re.search(rf"runbook_url: '?(\S+?)/{re.escape(RUNBOOK_PAGE)}#", rule_text)
    return found.group(1) if found else None


def alerts_problems(alerts_text: str) -> list[str]:
    """What is wrong with alerts.yml's annotations: every alert needs an absolute runbook_url at its
    runbook section, with the placeholder base (the generator puts the real one)."""
    problems = []
    for rule in alert_rules(alerts_text):
        name = rule.get("alert")
        if name is None:
            continue
        want = runbook_url(DEFAULT_RUNBOOK_BASE, name)
        if rule.get("annotations", {}).get("runbook_url") != want:
            problems.append(f"grafana/alerts.yml: {name} needs runbook_url: {want}")
    return problems


def rule_drift(alerts_text: str, rule_text: str) -> list[str]:
    """A problem when the committed PrometheusRule is not what alerts.yml generates (whatever its base)."""
    base = runbook_base_of(rule_text) or DEFAULT_RUNBOOK_BASE
    if prometheus_rule(alerts_text, base) != rule_text:
        return [
            f"{RULE_FILE.relative_to(ROOT)} is out of date with grafana/alerts.yml: run "
            f"`python -m devstack.kubernetes rule --write --runbook-base {base}`"
        ]
    return []


# -- rendering -------------------------------------------------------------------------------------


def render(base: Path = BASE) -> list[Manifest]:
    """The objects of the kustomize base, as kustomize makes them (or as close as reading it here gets)."""
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        result = subprocess.run([kubectl, "kustomize", str(base)], capture_output=True, text=True, check=False,
                                timeout=120)  # fmt: skip
        if result.returncode != 0:
            raise ValueError(f"kubectl kustomize {base}: {result.stderr.strip()}")
        return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return render_without_kustomize(base)


def render_without_kustomize(base: Path) -> list[Manifest]:
    """The kustomization's `resources` (files) and `configMapGenerator`s (files, envs, literals), read
    here: no name suffixes, patches or images (none of which changes what is validated)."""
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    objects: list[Manifest] = []
    for resource in kustomization.get("resources", []):
        objects += [doc for doc in yaml.safe_load_all((base / resource).read_text()) if doc]
    for generator in kustomization.get("configMapGenerator", []):
        data: dict[str, str] = {}
        for source in generator.get("files", []):
            key, _, path = source.rpartition("=")
            data[key or Path(path).name] = (base / path).read_text()
        for env_file in generator.get("envs", []):
            data.update(_env_file((base / env_file).read_text()))
        for literal in generator.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    return objects


def _env_file(text: str) -> dict[str, str]:
    pairs = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value
    return pairs


# -- checks ----------------------------------------------------------------------------------------


def one(objects: list[Manifest], kind: str) -> Manifest:
    """The single object of `kind`; ValueError when there is none or several."""
    found = [o for o in objects if o.get("kind") == kind]
    if len(found) != 1:
        raise ValueError(f"expected one {kind}, found {len(found)}")
    return found[0]


def container_ports(deployment: Manifest) -> dict[str, int]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return {port["name"]: port["containerPort"] for c in containers for port in c.get("ports", []) if "name" in port}


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def custom_resource_problems(objects: list[Manifest]) -> list[str]:
    """The minimal checks of the custom resources, and of how the objects refer to each other."""
    deployment = one(objects, "Deployment")
    pod_labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    ports = container_ports(deployment)
    return [
        *_service_problems(one(objects, "Service"), pod_labels, ports),
        *_budget_problems(one(objects, "PodDisruptionBudget"), pod_labels),
        *_pod_monitor_problems(one(objects, "PodMonitor"), pod_labels, ports),
        *_rule_problems(one(objects, "PrometheusRule")),
    ]


def _service_problems(service: Manifest, pod_labels: dict[str, str], ports: dict[str, int]) -> list[str]:
    problems = []
    if not _selects(service["spec"].get("selector", {}), pod_labels):
        problems.append("Service: its selector does not select the Deployment's pods")
    problems += [
        f"Service: targetPort {port.get('targetPort')!r} is not a named container port"
        for port in service["spec"]["ports"]
        if port.get("targetPort") not in ports
    ]
    return problems


def _budget_problems(budget: Manifest, pod_labels: dict[str, str]) -> list[str]:
    spec = budget["spec"]
    problems = []
    if not _selects(spec.get("selector", {}).get("matchLabels", {}), pod_labels):
        problems.append("PodDisruptionBudget: its selector does not select the Deployment's pods")
    if spec.get("maxUnavailable") != 1 or "minAvailable" in spec:
        problems.append("PodDisruptionBudget: maxUnavailable must be 1 (one consumer evicted at a time)")
    return problems


def _pod_monitor_problems(monitor: Manifest, pod_labels: dict[str, str], ports: dict[str, int]) -> list[str]:
    problems = []
    spec = monitor["spec"]
    if monitor.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append("PodMonitor: apiVersion must be monitoring.coreos.com/v1")
    if not _selects(spec.get("selector", {}).get("matchLabels", {}), pod_labels):
        problems.append("PodMonitor: spec.selector.matchLabels does not select the Deployment's pods")
    if pod_labels.get(spec.get("jobLabel", "")) != "microbatch":
        problems.append(
            'PodMonitor: jobLabel must name a pod label whose value is "microbatch" (the job the alerts match)'
        )
    endpoints = spec.get("podMetricsEndpoints") or []
    if not endpoints:
        problems.append("PodMonitor: no podMetricsEndpoints")
    problems += [
        f"PodMonitor: endpoint {endpoint} must scrape a named container port on /metrics"
        for endpoint in endpoints
        if endpoint.get("port") not in ports or endpoint.get("path", "/metrics") != "/metrics"
    ]
    return problems


def _rule_problems(rule: Manifest) -> list[str]:
    problems = []
    if rule.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append("PrometheusRule: apiVersion must be monitoring.coreos.com/v1")
    for entry in (entry for group in rule["spec"].get("groups", []) for entry in group.get("rules", [])):
        name = entry.get("alert", entry.get("record", "?"))
        if not isinstance(entry.get("expr"), str) or not entry["expr"].strip():
            problems.append(f"PrometheusRule: {name} has no expr")
        url = entry.get("annotations", {}).get("runbook_url", "")
        if "alert" in entry and not re.match(r"https?://[^/\s]+/\S*#" + re.escape(name.lower()) + "$", url):
            problems.append(f"PrometheusRule: {name} needs an absolute runbook_url ending in #{name.lower()}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.kubernetes", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rule = commands.add_parser("rule", help="the PrometheusRule generated from grafana/alerts.yml")
    rule.add_argument("--runbook-base", default=DEFAULT_RUNBOOK_BASE,
                      help=f"where the repository's files are published (default: {DEFAULT_RUNBOOK_BASE})")  # fmt: skip
    rule.add_argument("--write", action="store_true", help=f"write {RULE_FILE.relative_to(ROOT)}")
    out = commands.add_parser("render", help="render and check the base; files for kubernetes-validate and promtool")
    out.add_argument("outdir", type=Path)
    args = parser.parse_args(argv)
    alerts_text = ALERTS.read_text()
    if args.command == "rule":
        text = prometheus_rule(alerts_text, args.runbook_base)
        if args.write:
            RULE_FILE.write_text(text)
        else:
            sys.stdout.write(text)
        return 0
    objects = render()
    problems = alerts_problems(alerts_text) + rule_drift(alerts_text, RULE_FILE.read_text())
    problems += custom_resource_problems(objects)
    args.outdir.mkdir(parents=True, exist_ok=True)
    builtin = [o for o in objects if o.get("kind") not in CUSTOM_KINDS]
    (args.outdir / "kubernetes.yaml").write_text(yaml.safe_dump_all(builtin, sort_keys=False))
    groups = {"groups": one(objects, "PrometheusRule")["spec"]["groups"]}
    (args.outdir / "rules.yml").write_text(yaml.safe_dump(groups, sort_keys=False, width=4096))
    for problem in problems:
        print(f"deploy/kubernetes: {problem}", file=sys.stderr)
    kinds = ", ".join(sorted(str(o.get("kind")) for o in objects))
    print(f"rendered {len(objects)} objects ({kinds}); custom resources checked here: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
