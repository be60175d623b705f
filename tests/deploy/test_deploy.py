"""deploy/ checked with real tools: promtool, systemd-analyze, the Kubernetes schemas, the relay's own config loader and metrics."""

from __future__ import annotations

import http.server
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as k8s_schema

from relay.config import SmtpConfig, load_config
from relay.metrics import Metrics
from relay.passwords import hash_password

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "consent-relay.json"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yml"
K8S = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "consent-relay.service"
DOCKERFILE = DEPLOY / "Dockerfile"

METRIC_RE = re.compile(r"\bconsent_relay_[a-zA-Z0-9_]+")
ENV_REF_RE = re.compile(r'"env:([A-Za-z_][A-Za-z0-9_]*)"')
# Kubernetes versions the manifests must be valid for: an old supported one and the newest schemas shipped.
K8S_VERSIONS = ("1.27.0", k8s_schema.latest_version())


def run(*cmd: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, **kwargs)


def exported_metric_names() -> set[str]:
    """Every sample name the relay can export, from a fresh registry (labelled metrics have no samples yet)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names = set()
    for family in Metrics().registry.collect():
        names.update(family.name + s for s in suffixes[family.type])
    return names


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels(panels: list[dict[str, Any]] | None = None) -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"] if panels is None else panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", []) if "expr" in t]


def as_promql(expr: str) -> str:
    """Grafana's variables replaced by values Prometheus accepts, as Grafana does before sending a query."""
    for var, value in (("$__rate_interval", "5m"), ("$__interval", "1m"), ("$__range", "1d"), ("$account", ".*")):
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    return [(f.name, d) for f in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


def k8s_doc(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in k8s_docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def relay_container() -> dict[str, Any]:
    (container,) = k8s_doc("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def set_env_secrets(monkeypatch: pytest.MonkeyPatch, names: set[str]) -> None:
    """Valid values for every env: reference, as an operator would put them in .env or the Secret."""
    for name in names:
        value = hash_password("secret") if name.endswith("_HASH") else "a-secret-of-sufficient-length"
        monkeypatch.setenv(name, value)


def port_of(listen: str) -> int:
    return int(listen.rpartition(":")[2])


# --- Prometheus alert rules ---------------------------------------------------------


def test_alert_rules_pass_promtool_check() -> None:
    result = run("promtool", "check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_alert_unit_tests_pass_promtool() -> None:
    result = run("promtool", "test", "rules", ALERTS_TEST.name, cwd=ALERTS_TEST.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    cases = [case for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"] for case in test["alert_rule_test"]]
    for rule in alert_rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c.get("exp_alerts") for c in mine), f"{rule['alert']}: no test where it fires"
        assert any(not c.get("exp_alerts") for c in mine), f"{rule['alert']}: no test where it stays silent"


def test_the_alerts_the_issue_asks_for_exist() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in alert_rules()}
    wanted = {
        "ConsentRelayDown": "up{",
        "ConsentRelayUpstreamDown": "consent_relay_upstream_up",
        "ConsentRelayTempfailing": 'outcome="tempfailed"',
        "ConsentRelayOutboxGrowing": "consent_relay_outbox_messages",
        "ConsentRelayComplaintRateHigh": "consent_relay_complaints_total",
        "ConsentRelayAccountSuspended": 'state="suspended"',
        "ConsentRelayQuarantineBacklog": "consent_relay_quarantine_messages",
    }
    for alert, fragment in wanted.items():
        assert fragment in exprs.get(alert, ""), f"{alert} missing or not on {fragment}"
    assert "0.0025" in exprs["ConsentRelayComplaintRateHigh"], "complaint alert must warn below the 0.3% pause"


def test_alert_rules_only_use_metrics_the_relay_exports() -> None:
    exported = exported_metric_names()
    used = {name for rule in alert_rules() for name in METRIC_RE.findall(rule["expr"])}
    assert used, "no consent_relay_ metric in the alert rules"
    assert used <= exported, f"unknown metrics: {sorted(used - exported)}"


# --- Grafana dashboard --------------------------------------------------------------


def test_dashboard_queries_only_use_metrics_the_relay_exports() -> None:
    exported = exported_metric_names()
    queries = dashboard_exprs() + [json.dumps(v.get("query", "")) for v in dashboard()["templating"]["list"]]
    used = {name for q in queries for name in METRIC_RE.findall(q)}
    assert used <= exported, f"unknown metrics: {sorted(used - exported)}"
    # the panels the issue asks for: rejections/quarantines by rule and account, delivery, upstream
    # latency, outbox, complaint rate, account states, unsubscribes
    for needed in (
        "consent_relay_rule_hits_total",
        "consent_relay_messages_total",
        "consent_relay_upstream_seconds_bucket",
        "consent_relay_outbox_messages",
        "consent_relay_complaints_total",
        "consent_relay_recipients_total",
        "consent_relay_account_state",
        "consent_relay_unsubscribes_total",
    ):
        assert needed in used, f"no panel queries {needed}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # promtool parses every expression of a rules file: each dashboard query becomes a recording rule.
    rules = [{"record": f"dashboard:query_{i}", "expr": as_promql(e)} for i, e in enumerate(dashboard_exprs())]
    assert len(rules) >= 20
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run("promtool", "check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_is_well_formed() -> None:
    dash = dashboard()
    assert dash["uid"] == "consent-relay" and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = list(dashboard_panels())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        ref_ids = [t["refId"] for t in p["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), p["title"]
    # no two panels overlap on the 24-column grid
    cells: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]


# --- docker-compose -----------------------------------------------------------------


def container_path_on_host(service: dict[str, Any], container_path: str) -> Path:
    """The host file behind a path inside a compose container, through its bind mounts."""
    target = PurePosixPath(container_path)
    for volume in service.get("volumes", []):
        source, mount, *_ = volume.split(":")
        if source.startswith((".", "/")) and (target == PurePosixPath(mount) or PurePosixPath(mount) in target.parents):
            return (COMPOSE_DIR / source / target.relative_to(mount)).resolve()
    raise AssertionError(f"{container_path} is not bind-mounted from the host")


def test_compose_has_the_stack_and_its_files_exist() -> None:
    doc = compose()
    services = doc["services"]
    assert {"relay", "postfix", "postgres", "prometheus", "grafana"} <= set(services)
    declared_volumes = set(doc.get("volumes") or {})
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = COMPOSE_DIR / build["context"]
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), f"{name}: no Dockerfile"
        else:
            assert ":" in service["image"], f"{name}: pin the image tag"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE_DIR / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared_volumes, f"{name}: volume {source} not declared"
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"


def test_compose_secrets_are_documented_in_env_example() -> None:
    used = set(re.findall(r"\$\{([A-Z_]+)", COMPOSE.read_text()))
    documented = set(re.findall(r"^([A-Z_]+)=", (COMPOSE_DIR / ".env.example").read_text(), re.M))
    assert used and used <= documented, f"not in .env.example: {sorted(used - documented)}"


def test_compose_relay_config_loads_and_points_at_the_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = compose()
    services = doc["services"]
    relay = services["relay"]
    config_file = container_path_on_host(relay, "/etc/consent-relay/config.toml")
    text = config_file.read_text()
    refs = set(ENV_REF_RE.findall(text))
    assert refs <= set(relay["environment"]), f"env: secrets not passed to the relay: {sorted(refs - set(relay['environment']))}"
    set_env_secrets(monkeypatch, refs)
    config = load_config(config_file)  # the relay's own validation: unknown keys, types, secrets
    assert config.upstream.host == "postfix" and config.upstream.host in services
    assert config.store.url.startswith("postgresql://")
    assert re.search(r"@postgres:5432/", config.store.url)
    assert "PGPASSWORD" in relay["environment"], "asyncpg takes the store password from PGPASSWORD"
    assert config.http.admin_listen is not None and config.http.public_listen is not None
    published = {p.split(":")[-1] for p in relay["ports"]}
    assert {str(config.smtp.listen.port), str(config.http.admin_listen.port), str(config.http.public_listen.port)} <= published
    grace = int(relay["stop_grace_period"].rstrip("s"))
    assert grace > config.smtp.shutdown_grace


def test_compose_prometheus_scrapes_the_relay_and_loads_the_alerts(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    prometheus = services["prometheus"]
    prom_config_path = container_path_on_host(prometheus, "/etc/prometheus/prometheus.yml")
    result = run("promtool", "check", "config", "--syntax-only", prom_config_path)
    assert result.returncode == 0, result.stdout + result.stderr
    prom_config = yaml.safe_load(prom_config_path.read_text())
    rule_files = [container_path_on_host(prometheus, f) for f in prom_config["rule_files"]]
    assert ALERTS.resolve() in rule_files
    (job,) = [j for j in prom_config["scrape_configs"] if j["job_name"] == "consent-relay"]
    assert all('job="consent-relay"' in r["expr"] for r in alert_rules() if "up{" in r["expr"])
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host == "relay"
    relay_config = container_path_on_host(services["relay"], "/etc/consent-relay/config.toml")
    admin_listen = tomllib.loads(relay_config.read_text())["http"]["admin_listen"]
    assert int(port) == port_of(admin_listen)
    assert ipaddress.ip_address(admin_listen.rpartition(":")[0]).is_unspecified, "Prometheus scrapes from another container"


def test_compose_grafana_provisions_the_dashboard_and_datasource() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    provisioning = container_path_on_host(grafana, "/etc/grafana/provisioning")
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "consent-relay.yml").read_text())["providers"]
    assert container_path_on_host(grafana, provider["options"]["path"]) == DASHBOARD.parent.resolve()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert container_path_on_host(grafana, home) == DASHBOARD.resolve()
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in services


def test_compose_postfix_entrypoint_is_valid_shell() -> None:
    entrypoint = COMPOSE_DIR / "postfix" / "entrypoint.sh"
    assert os.access(entrypoint, os.X_OK)
    result = run("sh", "-n", entrypoint)
    assert result.returncode == 0, result.stderr
    assert "COPY entrypoint.sh" in (COMPOSE_DIR / "postfix" / "Dockerfile").read_text()


# --- Kubernetes ---------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_match_their_schemas(version: str) -> None:
    docs = k8s_docs()
    kinds = {d["kind"] for _, d in docs}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= kinds
    for filename, doc in docs:
        try:
            k8s_schema.validate(doc, version, strict=True)  # offline: the schemas ship in the package
        except k8s_schema.ValidationError as exc:
            pytest.fail(f"{filename} {doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert any(d["kind"] == "HorizontalPodAutoscaler" and d["apiVersion"] == "autoscaling/v2" for _, d in docs)


def test_kubernetes_schema_validation_catches_a_typo() -> None:
    broken = k8s_doc("Deployment")
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(k8s_schema.ValidationError):
        k8s_schema.validate(broken, K8S_VERSIONS[0], strict=True)


def test_kubernetes_objects_reference_each_other() -> None:
    deployment = k8s_doc("Deployment")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = relay_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    services = [d for _, d in k8s_docs() if d["kind"] == "Service"]
    assert any(d["spec"].get("type") == "LoadBalancer" and any(p["targetPort"] == "smtp" for p in d["spec"]["ports"]) for d in services)
    assert any(any(p["targetPort"] == "http" for p in d["spec"]["ports"]) for d in services)
    for service in services:
        assert service["spec"]["selector"].items() <= labels.items(), service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{service['metadata']['name']}: no container port {port['targetPort']}"
    assert k8s_doc("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = k8s_doc("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    for volume in pod["spec"]["volumes"]:
        if "configMap" in volume:
            k8s_doc("ConfigMap", volume["configMap"]["name"])
        if "secret" in volume:
            k8s_doc("Secret", volume["secret"]["secretName"])
    for source in container["envFrom"]:
        k8s_doc("Secret", source["secretRef"]["name"])


def test_kubernetes_probes_and_hardening() -> None:
    container = relay_container()
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert {"requests", "limits"} <= set(container["resources"])
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    pod_security = k8s_doc("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] != 0
    user = re.search(r"^USER (\d+)", DOCKERFILE.read_text(), re.M)
    assert user and int(user.group(1)) == pod_security["runAsUser"], "pod uid must be the image's user"


def test_kubernetes_config_loads_and_matches_the_pod(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    text = k8s_doc("ConfigMap", "consent-relay-config")["data"]["config.toml"]
    spec = k8s_doc("Deployment")["spec"]["template"]["spec"]
    container = relay_container()
    # files the config names must come from the pod's mounts; stand them up under tmp_path
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for path in re.findall(r'"(/etc/consent-relay/[^"]+)"', text):
        mount = next(m for p, m in mounts.items() if path == p or path.startswith(p + "/"))
        secret = volumes[mount["name"]]["secret"]["secretName"]
        assert PurePosixPath(path).name in k8s_doc("Secret", secret)["stringData"], path
        (tmp_path / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path.lstrip("/")).write_text("placeholder")
        text = text.replace(f'"{path}"', f'"{tmp_path / path.lstrip("/")}"')
    refs = set(ENV_REF_RE.findall(text))
    secret_keys = set(k8s_doc("Secret", "consent-relay-secrets")["stringData"])
    assert refs | {"PGPASSWORD"} <= secret_keys, f"missing in the Secret: {sorted(refs - secret_keys)}"
    set_env_secrets(monkeypatch, refs)
    config_file = tmp_path / "config.toml"
    config_file.write_text(text)
    config = load_config(config_file)
    assert config.store.url.startswith("postgresql://"), "several replicas need the shared store"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert config.http.admin_listen is not None and config.http.public_listen is not None
    assert ports == {"smtp": config.smtp.listen.port, "admin": config.http.admin_listen.port, "http": config.http.public_listen.port}
    assert ipaddress.ip_address(config.http.admin_listen.host).is_unspecified, "probes reach the pod IP"
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] > config.smtp.shutdown_grace + pre_stop
    mounted_config = mounts["/etc/consent-relay/config.toml"]
    assert volumes[mounted_config["name"]]["configMap"]["name"] == "consent-relay-config"
    assert container["args"][-1] == "/etc/consent-relay/config.toml"


# --- systemd ------------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # A root with the system's units and a stand-in for the installed entry point, so that
    # verify checks this unit, not whether the relay is installed on the test machine.
    shutil.copytree("/usr/lib/systemd/system", tmp_path / "usr/lib/systemd/system", symlinks=True)
    executables = {shlex.split(v)[0] for k, vs in unit_settings().items() if k.startswith("Exec") for v in vs}
    for exe in executables:
        stub = tmp_path / exe.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    installed = tmp_path / "etc/systemd/system" / UNIT.name
    installed.parent.mkdir(parents=True)
    shutil.copy(UNIT, installed)
    result = run("systemd-analyze", "verify", f"--root={tmp_path}", installed)
    # verify exits 0 on unknown keys and bad values ("…, ignoring"): any output is a failure
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_systemd_unit_is_hardened() -> None:
    s = unit_settings()
    expected = {
        "DynamicUser": "no",
        "User": "consent-relay",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "StateDirectory": "consent-relay",
        "ReadWritePaths": "/var/lib/consent-relay",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "KillSignal": "SIGTERM",
        "Restart": "on-failure",
    }
    for key, value in expected.items():
        assert s.get(key) == [value], f"{key}={s.get(key)}"
    assert "@system-service" in s["SystemCallFilter"]
    assert int(s["TimeoutStopSec"][0]) > SmtpConfig().shutdown_grace
    sysusers = (UNIT.parent / "consent-relay.sysusers.conf").read_text()
    assert re.search(r"^u consent-relay .* /var/lib/consent-relay ", sysusers, re.M)


# --- Dockerfile ---------------------------------------------------------------------


def dockerfile_instructions(stage: int | None = None) -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out, stages = [], -1
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        stages += keyword.upper() == "FROM"
        if stage is None or stages == stage:
            out.append((keyword.upper(), rest.strip()))
    return out


def dockerignored(path: str) -> bool:
    """BuildKit's rule, enough for our file: the last matching pattern wins, `!` re-includes."""
    ignored = False
    for raw in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = PurePosixPath(path).parts
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch(c, pattern) or fnmatch(c, pattern.replace("**/", "")) for c in candidates):
            ignored = not negate
    return ignored


def test_dockerfile_shape() -> None:
    final = dockerfile_instructions(stage=1)
    assert final[0] == ("FROM", "python:3.11-slim")
    values = {k: v for k, v in final}
    assert values["USER"].split(":")[0] not in ("0", "root")
    assert json.loads(values["VOLUME"]) == ["/etc/consent-relay", "/var/lib/consent-relay"]
    assert set(values["EXPOSE"].split()) == {"2525", "8025", "8080"}
    assert json.loads(values["ENTRYPOINT"]) == ["consent-relay"]
    assert json.loads(values["CMD"]) == ["serve", "-c", "/etc/consent-relay/config.toml"]
    assert "/healthz" in values["HEALTHCHECK"]


def healthcheck_command() -> list[str]:
    healthcheck = dict(dockerfile_instructions(stage=1))["HEALTHCHECK"]
    command = json.loads(healthcheck[healthcheck.index("CMD ") + 4 :])
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


class HealthServer(http.server.ThreadingHTTPServer):
    def __init__(self, status: int) -> None:
        self.status = status
        self.paths: list[str] = []
        super().__init__(("127.0.0.1", 0), HealthHandler)


class HealthHandler(http.server.BaseHTTPRequestHandler):
    server: HealthServer

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        self.send_response(self.server.status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_dockerfile_healthcheck_follows_healthz(status: int, healthy: bool) -> None:
    server = HealthServer(status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/healthz"
        result = run(*healthcheck_command(), env={**os.environ, "CONSENT_RELAY_HEALTHZ": url})
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) is healthy, result.stderr
    assert server.paths == ["/healthz"]


def test_dockerfile_healthcheck_fails_when_nothing_listens() -> None:
    with HealthServer(200) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/healthz"
    result = run(*healthcheck_command(), env={**os.environ, "CONSENT_RELAY_HEALTHZ": url})
    assert result.returncode != 0


def test_dockerfile_build_stage_builds_the_package(tmp_path: Path) -> None:
    """What the build stage copies, after Dockerfile.dockerignore, is enough for `pip install .`."""
    context = tmp_path / "context"
    for keyword, rest in dockerfile_instructions(stage=0):
        if keyword != "COPY":
            continue
        *sources, _ = rest.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not dockerignored(source), f"COPY {source}: excluded by Dockerfile.dockerignore"
            for path in [ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*"):
                relative = path.relative_to(ROOT).as_posix()
                if path.is_file() and not dockerignored(relative):
                    (context / relative).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, context / relative)
    assert dockerignored("tests/deploy/test_deploy.py") and dockerignored("relay/__pycache__/x.pyc")
    # with build isolation, as `pip install .` in the image runs (it fetches the build backend)
    result = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", context)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("consent_relay-*.whl")
    listing = run(sys.executable, "-m", "zipfile", "-l", wheel).stdout
    assert "relay/metrics.py" in listing and "policies/profiles/" in listing
