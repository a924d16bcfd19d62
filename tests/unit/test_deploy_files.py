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
from worker.settings import Settings

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
