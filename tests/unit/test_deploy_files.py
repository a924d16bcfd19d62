"""The deploy files cannot run here (no Docker engine, no cluster); what can be checked is checked:
they parse, set only settings that exist, run only commands that exist, and chart only documented metrics."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.entrypoints.cli import build_parser
from worker.service.views import BACKORDER_RATE_TARGET, CANCEL_RATE_TARGET, FILL_TIME_TARGET_DAYS
from worker.settings import DEFAULT_SECRETS_DIR, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
README = (ROOT / "README.md").read_text()
YAML_FILES = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])


def documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def setting_names() -> set[str]:
    conventional = {"kafka_bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS", "database_url": "DATABASE_URL"}
    return {conventional.get(name, f"BACKORDER_{name.upper()}") for name in Settings.model_fields}


def subcommands() -> set[str]:
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(actions[0].choices)


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    assert documents(path)


def test_compose_and_kubernetes_set_only_settings_that_exist() -> None:
    compose = documents(DEPLOY / "compose.yaml")[0]
    used = set(compose["x-worker-environment"])
    for doc in documents(DEPLOY / "kubernetes" / "configmap.yaml") + documents(DEPLOY / "kubernetes" / "secret.yaml"):
        used |= set(doc.get("data") or doc.get("stringData"))
    assert used, "no settings found"
    assert used <= setting_names(), used - setting_names()


def test_containers_run_only_commands_that_exist() -> None:
    commands: list[str] = []
    compose = documents(DEPLOY / "compose.yaml")[0]
    for name in ("setup", "worker"):
        service = compose["services"][name]
        commands += [" ".join(service.get("entrypoint", [])), " ".join(service.get("command", []))]
    for path in (DEPLOY / "kubernetes").glob("*.yaml"):
        for doc in documents(path):
            spec = doc.get("spec", {})
            pod = spec.get("template", {}).get("spec", {}) if "template" in spec else {}
            for container in pod.get("containers", []):
                commands += [" ".join(container.get("command", [])), " ".join(container.get("args", []))]
    invoked = {m for c in commands for m in re.findall(r"backorder-worker (\w+)", c)}
    invoked |= {c.split()[0] for c in commands if c and not c.startswith(("sh", "backorder-worker"))}
    assert invoked >= {"run", "migrate", "topics"}
    assert invoked <= subcommands(), invoked - subcommands()


def test_the_image_runs_the_projects_command_and_copies_what_exists() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert 'ENTRYPOINT ["backorder-worker"]' in dockerfile and "backorder-worker" in scripts
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.MULTILINE):
        for item in source.split():
            assert (ROOT / item).exists(), item
    assert "USER 10001" in dockerfile


def test_the_probes_use_the_workers_endpoints() -> None:
    [deployment] = documents(DEPLOY / "kubernetes" / "deployment.yaml")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["ports"][0]["containerPort"] == Settings.model_fields["metrics_port"].default
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"]


def metric_names(text: str) -> set[str]:
    names = set(re.findall(r"(?<![:\w])backorder_[a-z0-9_]*[a-z0-9]\b", text))
    return {re.sub(r"_(bucket|sum|count)$", "", n) if not n.endswith("_total") else n for n in names}


def test_the_dashboard_and_the_rules_use_only_documented_metrics_and_recorded_rules() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "backorders.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    rules = (DEPLOY / "prometheus" / "rules.yml").read_text()
    for name in metric_names(exprs) | metric_names(rules):
        assert f"`{name}`" in README, f"{name} is charted or alerted on but not in the README's metric table"
    recorded = set(re.findall(r"record: (\S+)", rules))
    assert set(re.findall(r"backorder:[a-z0-9_:]+", exprs)) <= recorded


def test_the_alerts_and_the_dashboard_hold_the_business_targets_the_report_states() -> None:
    """The targets are defined once, in worker/service/views.py; the YAML and JSON cannot import them."""
    targets = {
        "backorder:backorder_rate:ratio1d": BACKORDER_RATE_TARGET,
        "backorder:fill_time_days:avg7d": FILL_TIME_TARGET_DAYS,
        "backorder:cancel_rate:ratio7d": CANCEL_RATE_TARGET,
    }
    alerts = {
        rule["expr"].split(" > ")[0]: rule
        for group in documents(DEPLOY / "prometheus" / "rules.yml")[0]["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "backorders.json").read_text())
    panels = {t["expr"]: p for p in dashboard["panels"] for t in p.get("targets", [])}
    for series, target in targets.items():
        shown = f"{target:.0%}" if target < 1 else str(target)
        alert = alerts[series]
        assert float(alert["expr"].split(" > ")[1].split()[0]) == target, series
        assert f"(target < {shown})" in alert["annotations"]["summary"], series
        panel = panels[series]
        assert f"target < {shown})" in panel["title"], series
        assert panel["fieldConfig"]["defaults"]["thresholds"]["steps"][-1]["value"] == target, series


def test_the_wheel_carries_schemas_migrations_and_templates(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("backorder_worker-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for pattern in (
        r"worker/schemas/OrderCreated\.v1\.avsc",
        r"worker/migrations/0001_.*\.sql",
        r"worker/templates/ORDER_SHIPPED\.txt",
    ):
        assert any(re.fullmatch(pattern, n) for n in names), pattern


def workloads() -> dict[str, dict[str, Any]]:
    """The pod specs of the Deployment and the migrate Job, by kind."""
    found = {}
    for path in (DEPLOY / "kubernetes").glob("*.yaml"):
        for doc in documents(path):
            if doc["kind"] in ("Deployment", "Job"):
                found[doc["kind"]] = doc["spec"]["template"]["spec"]
    assert set(found) == {"Deployment", "Job"}
    return found


def test_the_probes_time_out() -> None:
    [container] = workloads()["Deployment"]["containers"]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert 0 < container[probe]["timeoutSeconds"] < container[probe]["periodSeconds"], probe


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_the_pods_are_locked_down(kind: str) -> None:
    pod = workloads()[kind]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["resources"]["limits"]["memory"]
        # Secrets come as files from the secret volume, where the worker looks by default; not as variables.
        assert not any("secretRef" in source for source in container.get("envFrom", []))
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        secret_volumes = {v["name"] for v in pod["volumes"] if "secret" in v}
        assert mounts[str(DEFAULT_SECRETS_DIR)] in secret_volumes


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


def test_the_memory_limit_is_above_the_measured_peak() -> None:
    measured_peak_mib = 818  # worker RSS under ~110,000 hostile messages (issue 8)
    [container] = workloads()["Deployment"]["containers"]
    assert mebibytes(container["resources"]["limits"]["memory"]) >= measured_peak_mib * 1.2
    compose = documents(DEPLOY / "compose.yaml")[0]
    assert compose["services"]["worker"]["mem_limit"] == "1g"


def test_the_metrics_port_is_open_to_the_monitoring_namespace_only() -> None:
    [policy] = documents(DEPLOY / "kubernetes" / "networkpolicy.yaml")
    [deployment] = [d for d in documents(DEPLOY / "kubernetes" / "deployment.yaml")]
    assert policy["kind"] == "NetworkPolicy"
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": Settings.model_fields["metrics_port"].default}]
    assert "kubernetes.io/metadata.name" in README and "networkpolicy.yaml" in README


def test_containers_listen_on_all_interfaces_since_the_default_is_loopback() -> None:
    assert Settings.model_fields["metrics_host"].default == "127.0.0.1"
    [configmap] = documents(DEPLOY / "kubernetes" / "configmap.yaml")
    assert configmap["data"]["BACKORDER_METRICS_HOST"] == "0.0.0.0"
    compose = documents(DEPLOY / "compose.yaml")[0]
    assert compose["x-worker-environment"]["BACKORDER_METRICS_HOST"] == "0.0.0.0"
    assert "BACKORDER_METRICS_HOST=0.0.0.0" in (DEPLOY / "Dockerfile").read_text()


def test_compose_has_no_default_password_and_publishes_on_loopback_only() -> None:
    compose = documents(DEPLOY / "compose.yaml")[0]
    environments = [compose["x-worker-environment"]] + [s.get("environment", {}) for s in compose["services"].values()]
    for environment in environments:
        for name, value in environment.items():
            if "PASSWORD" in name:
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", value), (name, value)
    assert re.search(r"://backorder:\$\{POSTGRES_PASSWORD:\?[^}]+\}@", compose["x-worker-environment"]["DATABASE_URL"])
    published = [port for service in compose["services"].values() for port in service.get("ports", [])]
    assert published
    for port in published:
        assert port.startswith("127.0.0.1:"), port
    for name in ("setup", "worker"):
        service = compose["services"][name]
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]


def locked(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a pip-compile lock file."""
    pins: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z])", path.read_text()):
        match = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", block)
        if match:
            pins[match[1].lower().replace("_", "-")] = (match[2], re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return pins


def test_the_lock_files_pin_every_dependency_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, test = locked(ROOT / "requirements.lock"), locked(ROOT / "requirements-test.lock")
    for pins, direct in (
        (runtime, project["dependencies"]),
        (test, project["dependencies"] + project["optional-dependencies"]["test"]),
    ):
        for requirement in direct:
            name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==(\S+)", requirement).groups()  # type: ignore[union-attr]
            assert pins[name.lower().replace("_", "-")][0] == version, requirement
        assert all(hashes for _, hashes in pins.values())
        assert {"setuptools", "wheel"} <= set(pins)  # the build backend is hash-checked too
    assert all(test[name] == pin for name, pin in runtime.items()), "the image and make must install the same versions"


def test_make_and_the_image_install_from_the_lock_files() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^LOCK\s+:= requirements-test\.lock$", makefile, re.MULTILINE)
    assert re.search(r"^STAMP\s+:= .*\$\(LOCK\)", makefile, re.MULTILINE), "the stamp must change with the lock file"
    assert "pip install --quiet --require-hashes -r $(LOCK)" in makefile
    assert "--no-deps --no-build-isolation -e ." in makefile
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "--require-hashes -r requirements.lock" in dockerfile and "--no-deps --no-build-isolation ." in dockerfile
    [image] = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.MULTILINE)
    assert re.fullmatch(r"python:3\.11[\w.-]*-slim-bookworm@sha256:[0-9a-f]{64}", image)
    assert re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE) == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
