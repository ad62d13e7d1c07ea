"""What can be checked of the deployment files without Docker or a Prometheus server:
compose.yaml's services run real commands with real settings, the Dockerfile installs the
package, and the alert rules pass promtool's checks and unit tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import REGISTRY
from pydantic import AliasChoices, ValidationError
from pydantic_settings import BaseSettings

from job_handlers import cli as job_cli
from job_handlers import metrics as _job_metrics  # noqa: F401 - registers the metrics
from job_handlers.observe import QueueCollector
from job_handlers.settings import WorkerSettings
from wal_consumer import cli as wal_cli
from wal_consumer import metrics as _wal_metrics  # noqa: F401 - registers the metrics
from wal_consumer.observe import SlotCollector
from wal_consumer.settings import ConsumerSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERT_TESTS = ROOT / "tests" / "prometheus" / "alerts_test.yml"
PROGRAMS: dict[str, tuple[Any, type[BaseSettings]]] = {
    "wal-consumer": (wal_cli, ConsumerSettings),
    "job-handlers": (job_cli, WorkerSettings),
}
# read by our code outside the settings objects (wal_consumer/roles.py)
EXTRA_ENV = {"GRAILS_CONSUMER_PASSWORD", "GRAILS_WORKER_PASSWORD"}
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian package `prometheus`: apt-get install prometheus)")


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default}, with the defaults (the variables are unset in CI)."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: m.group(2), value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def app_services(compose: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, service in compose["services"].items():
        if "build" in service:
            yield name, service


def env_names(model: type[BaseSettings]) -> set[str]:
    prefix = str(model.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for field_name, field in model.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(c for c in alias.choices if isinstance(c, str))
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"{prefix}{field_name}".upper())
    return names


def environment(service: dict[str, Any]) -> dict[str, str]:
    return {k: interpolate(str(v)) for k, v in (service.get("environment") or {}).items()}


def test_compose_has_every_service_of_the_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "setup", "consumer", "consumer-standby", "worker-1", "worker-2", "web",
            "mailpit", "anvil"} <= set(services)
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:15")
    assert "wal_level=logical" in postgres["command"]
    commands = {name: s["command"][:2] for name, s in app_services(compose)}
    assert commands == {
        "setup": ["wal-consumer", "setup"], "consumer": ["wal-consumer", "run"],
        "consumer-standby": ["wal-consumer", "run"], "worker-1": ["job-handlers", "worker"],
        "worker-2": ["job-handlers", "worker"], "web": ["job-handlers", "web"]}
    assert "--roles" in services["setup"]["command"]
    assert services["anvil"]["image"].startswith("ghcr.io/foundry-rs/foundry")
    for name, service in app_services(compose):
        if name != "setup":
            assert service["depends_on"]["setup"]["condition"] == \
                "service_completed_successfully", name


def test_every_command_is_a_real_entry_point_and_subcommand(compose: dict[str, Any]) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    bindir = Path(sys.executable).parent
    for name, service in app_services(compose):
        program, *args = service["command"]
        assert program in scripts, f"{name}: {program} is not a console script"
        module = PROGRAMS[program][0]
        try:
            module.build_parser().parse_args(args)
        except SystemExit as exc:
            pytest.fail(f"{name}: `{' '.join(service['command'])}` is refused: exit {exc}")
    # and the installed console scripts answer for each subcommand
    for program, sub in {tuple(s["command"][:2]) for _, s in app_services(compose)}:
        executable = shutil.which(program, path=str(bindir)) or shutil.which(program)
        assert executable, f"{program} is not installed (pip install -e .)"
        result = subprocess.run([executable, sub, "--help"], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        assert f"usage: {program} {sub}" in result.stdout


def test_every_environment_variable_is_a_real_setting_with_a_valid_value(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, service in app_services(compose):
        settings_class = PROGRAMS[service["command"][0]][1]
        env = environment(service)
        unknown = set(env) - env_names(settings_class) - EXTRA_ENV
        assert not unknown, f"{name}: not settings of {settings_class.__name__}: {unknown}"
        with monkeypatch.context() as m:
            for key in [k for k in os.environ if k.startswith(("WAL_", "JOB_"))
                        or k in {"DATABASE_URL", "SMTP_URL", "ETH_RPC_URL", "LOG_LEVEL"}]:
                m.delenv(key)
            for key, value in env.items():
                m.setenv(key, value)
            try:
                settings_class()
            except ValidationError as exc:
                pytest.fail(f"{name}: invalid settings: {exc}")


def test_daemons_run_as_least_privilege_roles_and_serve_their_health(
    compose: dict[str, Any]
) -> None:
    roles = {"setup": "postgres", "consumer": "grails_consumer",
             "consumer-standby": "grails_consumer", "worker-1": "grails_worker",
             "worker-2": "grails_worker", "web": "grails_worker"}
    for name, service in app_services(compose):
        env = environment(service)
        url = urlsplit(env["DATABASE_URL"])
        assert url.username == roles[name], name
        assert url.hostname == "postgres" and url.path == "/grails", name
        port = env.get("WAL_METRICS_PORT") or env.get("JOB_METRICS_PORT")
        if name in ("setup", "web"):
            assert port is None, name
            continue
        assert port, f"{name} serves no /metrics"
        probe = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{port}/readyz" in probe, name
    # the passwords setup gives the roles are the ones the daemons log in with
    setup_env = environment(compose["services"]["setup"])
    consumer_url = urlsplit(environment(compose["services"]["consumer"])["DATABASE_URL"])
    worker_url = urlsplit(environment(compose["services"]["worker-1"])["DATABASE_URL"])
    assert consumer_url.password == setup_env["GRAILS_CONSUMER_PASSWORD"]
    assert worker_url.password == setup_env["GRAILS_WORKER_PASSWORD"]


def test_prometheus_scrapes_the_daemons_on_their_metrics_ports(compose: dict[str, Any]) -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: sorted(t for sc in job["static_configs"] for t in sc["targets"])
            for job in config["scrape_configs"]}
    expected: dict[str, list[str]] = {"wal-consumer": [], "job-handlers": []}
    for name, service in app_services(compose):
        env = environment(service)
        for job, variable in (("wal-consumer", "WAL_METRICS_PORT"),
                              ("job-handlers", "JOB_METRICS_PORT")):
            if variable in env:
                expected[job].append(f"{name}:{env[variable]}")
    assert jobs == {job: sorted(targets) for job, targets in expected.items()}
    assert config["rule_files"] == ["alerts.yml"]


def test_dockerfile_installs_the_package_with_its_sql() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    for path in ("pyproject.toml", "wal_consumer", "job_handlers", "sql"):
        assert re.search(rf"^COPY .*\b{re.escape(path)}\b", text, re.M), path
        assert (ROOT / path).exists(), path
    assert re.search(r"^RUN pip install -e \.", text, re.M)


def metric_names() -> set[str]:
    families = [*REGISTRY.collect(), *SlotCollector(None, "s", 0).describe(),  # type: ignore[arg-type]
                *QueueCollector(None, 0, 30).describe()]  # type: ignore[arg-type]
    return {f.name + suffix for f in families
            for suffix in ("", "_total", "_count", "_sum", "_bucket")}


def test_alerts_use_metrics_the_daemons_export() -> None:
    known = metric_names()
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    used: set[str] = set()
    for rule in (r for g in groups for r in g["rules"]):
        used.update(re.findall(r"\b((?:wal_consumer|job_handlers)_[a-z0-9_]+)", rule["expr"]))
    assert used, "no metric found in the alert expressions"
    assert used - known == set(), f"alerts use metrics nobody exports: {used - known}"


@needs_promtool
def test_alert_rules_pass_promtool_check() -> None:
    assert PROMTOOL is not None
    for args in (["check", "rules", str(ALERTS)], ["check", "config", str(PROMETHEUS)]):
        result = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_alert_rules_fire_as_specified() -> None:
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, "test", "rules", str(ALERT_TESTS)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
