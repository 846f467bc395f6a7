"""deploy/: the compose file and the Kubernetes manifests against their schemas (offline: the schemas
ship in kubernetes-validate and check-jsonschema), and against the app they deploy: the metrics the
Grafana dashboard and the autoscaler query are ones a real runtime serves, the probes answer as the
manifests expect (readiness fails while draining, liveness does not), the grace periods outlast the
drain, the secrets are names only, and nginx parses the compose proxy's configuration.
Docker is not run here: the compose file is checked statically."""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args, get_origin

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import services_required
from voxroute.agent.config import ShutdownConfig, TelephonyConfig, load_config
from voxroute.agent.timeline import TurnRecord
from voxroute.emulators.stack import run_emulators
from voxroute.routing.route import Route
from voxroute.runtime import build_services, create_runtime_app, emulator_options, missing_secrets
from voxroute.server import serve_app
from voxroute.telephony.admission import CallGate
from voxroute.telephony.carriers import (
    EXOTEL_STREAM_PATH,
    PLIVO_STREAM_PATH,
    TELNYX_STREAM_PATH,
    TWILIO_STREAM_PATH,
)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
K8S_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())  # the oldest we claim, the newest
NOT_APPLIED = {"kustomization.yaml", "secrets.template.yaml", "prometheus-adapter-rules.yaml"}
DRAIN_END_WAIT_S = 2.0  # voxroute/runtime.py drain(): after the closing phrases, the sessions' last wait
SCRAPE_LABELS = {"instance", "job", "namespace", "pod"}  # added by Prometheus, not the app
SECRET_NAME = re.compile(r"(KEY|TOKEN|PASSWORD|SECRET|SALT|CREDENTIALS)$")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def k8s_docs() -> list[tuple[str, dict]]:
    return [
        (path.name, doc)
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if doc
    ]


def k8s(kind: str, name: str | None = None) -> dict:
    found = [
        d for _, d in k8s_docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} in deploy/k8s"
    return found[0]


def compose() -> dict:
    return load_yaml(DEPLOY / "compose.yaml")


def voxroute_services(doc: dict) -> dict[str, dict]:
    """The compose services built from the repository's Dockerfile."""
    return {name: svc for name, svc in doc["services"].items() if "build" in svc}


def dockerfile_command() -> list[str]:
    """The Dockerfile's ENTRYPOINT after tini: the command the image runs."""
    line = next(
        line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("ENTRYPOINT")
    )
    argv = json.loads(line.removeprefix("ENTRYPOINT"))
    assert argv[:2] == ["/usr/bin/tini", "--"], argv
    return argv[2:]


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def seconds(duration: str) -> float:
    """A compose duration ("1m30s", "45s")."""
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", duration)
    assert parts and duration, duration
    return int(parts[1] or 0) * 60 + float(parts[2] or 0)


def shutdown_configs() -> list[tuple[str, ShutdownConfig]]:
    """The defaults and every example config's shutdown section: the configs users start from."""
    return [("defaults", ShutdownConfig())] + [(p.name, load_config(p).shutdown) for p in EXAMPLES]


def longest_shutdown_s(shutdown: ShutdownConfig) -> float:
    """SIGTERM to exit at the longest: the drain, each call's closing phrase, the sessions' last wait."""
    return shutdown.drain_s + shutdown.closing_timeout_s + DRAIN_END_WAIT_S


# ---------------------------------------------------------------- the runtime the files deploy


def _turn_touching_every_series() -> dict:
    turn = TurnRecord(index=1, budget_ms=1000)
    turn.route = Route(routing_class="faq", tier="fast", model="m", paths=("fast",), reason="test")
    turn.mark("speech_end", 100.0)
    turn.mark("first_audio_out", 1300.0)  # over the budget: a miss
    turn.outcome = "answered"
    turn.usage = {"cost_usd": 0.001, "hedges": 1}
    turn.bridge, turn.bridge_kind = True, "cached"
    turn.add_fallback("openrouter", "timeout", "slow", "next rung", service="llm")
    turn.tools = [{"name": "transfer_to_human", "status": "ok", "latency_ms": 20}]
    return turn.as_dict()


async def _probe_runtime() -> dict[str, Any]:
    """The runtime app `voxroute serve` runs, on a real socket: its probes before and while
    draining, its routes, and a scrape of /metrics after one call touched every labelled series."""
    config = load_config(ROOT / "examples" / "default.yaml")
    found: dict[str, Any] = {}
    async with run_emulators("reference", 0, [], **emulator_options(config)) as emu:
        async with build_services(config, emu.urls) as services:
            gate = CallGate(config.telephony.max_concurrent_calls)
            app = create_runtime_app(services, dev=True, gate=gate)
            found["paths"] = {getattr(route, "path", None) for route in app.routes}
            prom = app.state.prom
            call = {"call_sid": "CAdeploy", "tenant": "default", "channel": "voice"}
            prom.call_started(call)
            prom.turn_finished(call, _turn_touching_every_series())
            prom.call_ended({**call, "ended": "completed", "outcome": "resolved"})
            prom.call_started({"call_sid": "CAlive", "tenant": "default"})
            async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
                found["healthz"] = (await http.get("/healthz")).status_code
                found["readyz"] = (await http.get("/readyz")).status_code
                gate.draining = True
                found["healthz_draining"] = (await http.get("/healthz")).status_code
                found["readyz_draining"] = (await http.get("/readyz")).status_code
                gate.check("twilio", "CArefused")  # a call refused while draining: counted
                found["metrics"] = (await http.get("/metrics")).text
    return found


@pytest.fixture(scope="module")
def runtime() -> dict[str, Any]:
    return asyncio.run(_probe_runtime())


@pytest.fixture(scope="module")
def exported(runtime) -> dict[str, set[str] | None]:
    """Every sample name the runtime exports -> its label names (None: no sample to tell them)."""
    names: dict[str, set[str] | None] = {}
    for family in text_string_to_metric_families(runtime["metrics"]):
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("_count", "_sum", "_created", ""),
        }.get(family.type, ("",))
        for suffix in suffixes:
            names.setdefault(family.name + suffix, None)
        for sample in family.samples:
            labels = set(sample.labels) - {"le", "quantile"}
            known = names.get(sample.name) or set()
            names[sample.name] = known | labels | ({"le"} if sample.name.endswith("_bucket") else set())
    return names


def check_query(expr: str, exported: dict[str, set[str] | None], where: str) -> set[str]:
    """The metrics a PromQL expression reads: each one the runtime exports, each label it matches
    on one that metric has. Returns the metric names."""
    metrics = set(re.findall(r"\b((?:voxroute|process)_[a-z0-9_]+)\b", expr))
    assert metrics, f"{where}: no voxroute metric in {expr!r}"
    for name in metrics:
        assert name in exported, f"{where}: {name} is not exported by the runtime (agent/prom.py)"
    for name, matchers in re.findall(r"\b((?:voxroute|process)_[a-z0-9_]+)\s*\{([^}]*)\}", expr):
        used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers)) - SCRAPE_LABELS
        labels = exported[name]
        assert labels is not None or not used, f"{where}: {name} had no sample to check {used} against"
        assert used <= (labels or set()), f"{where}: {name} has no label {used - (labels or set())}"
    grouped = {
        label for group in re.findall(r"\bby\s*\(([^)]*)\)", expr) for label in re.findall(r"\w+", group)
    }
    known = set().union(*((exported[name] or set()) for name in metrics)) | SCRAPE_LABELS
    assert grouped <= known, f"{where}: grouped by {grouped - known}, which none of {metrics} has"
    return metrics


def test_the_runtime_serves_the_probes_the_manifests_use(runtime):
    assert runtime["healthz"] == 200 and runtime["readyz"] == 200
    # Draining (SIGTERM): readiness fails so no new call comes; liveness holds so the pod is not killed.
    assert runtime["readyz_draining"] == 503 and runtime["healthz_draining"] == 200
    container = k8s("Deployment")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in runtime["paths"], f"{probe}: the app has no {get['path']}"
        assert ports[get["port"]] == int(flag(dockerfile_command(), "--port"))
    assert "command" not in container and "args" not in container  # the image's own serve command


def test_manifests_pass_the_kubernetes_schemas_strictly():
    checked = 0
    for name, doc in k8s_docs():
        if doc["kind"] == "Kustomization":
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{name} {doc['kind']} (Kubernetes {version}): {path}: {exc.message}")
        checked += 1
    assert checked >= 8
    # strict: a misspelt field is an error, not something the cluster silently ignores
    bad = k8s("Deployment")
    container = bad["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)


def test_kustomization_applies_every_manifest_but_the_templates():
    listed = k8s("Kustomization")["resources"]
    on_disk = {p.name for p in K8S.glob("*.yaml")}
    assert set(listed) <= on_disk
    assert set(listed) == on_disk - NOT_APPLIED


def test_termination_grace_outlasts_the_drain():
    spec = k8s("Deployment")["spec"]["template"]["spec"]
    pre_stop = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    for name, shutdown in shutdown_configs():
        needed = float(pre_stop[1]) + longest_shutdown_s(shutdown)
        assert spec["terminationGracePeriodSeconds"] > needed, f"{name}: drain_s {shutdown.drain_s}"
    for svc_name, svc in voxroute_services(compose()).items():
        for name, shutdown in shutdown_configs():
            assert seconds(svc["stop_grace_period"]) > longest_shutdown_s(shutdown), f"{svc_name}, {name}"


def test_autoscaler_metric_is_served_and_mapped_by_the_adapter_rule(exported):
    hpa = k8s("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == k8s("Deployment")["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2  # one pod draining leaves one taking calls
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    rules = yaml.safe_load(k8s("ConfigMap", "voxroute-prometheus-adapter-rules")["data"]["config.yaml"])
    rule = next(r for r in rules["rules"] if r["name"]["as"] == name)
    assert re.fullmatch(rule["name"]["matches"], name)
    assert check_query(rule["seriesQuery"], exported, "adapter rule") == {name}
    assert exported[name] == set()  # a gauge per process: per pod once Prometheus labels it
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    # the target is under the call cap, where a pod turns unready and takes no more calls
    for path in EXAMPLES:
        assert (
            float(metric["pods"]["target"]["averageValue"]) < load_config(path).telephony.max_concurrent_calls
        )


def test_grafana_dashboard_reads_only_served_metrics(exported):
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "voxroute.json").read_text())
    datasource = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")
    (source,) = datasource["datasources"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    read: set[str] = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"], panel["title"]
            read |= check_query(target["expr"], exported, panel["title"])
    for variable in dashboard["templating"]["list"]:
        read |= check_query(variable["query"]["query"], exported, f"${variable['name']}")
    titles = " | ".join(p["title"] for p in panels).lower()
    for wanted in ("first audio p50 by routing class", "first audio p95", "turns within budget",
                   "escalat", "cost per resolved call", "containment", "active calls"):  # fmt: skip
        assert wanted in titles, wanted
    assert {"voxroute_first_audio_seconds_bucket", "voxroute_budget_misses_total",
            "voxroute_call_outcomes_total", "voxroute_cost_usd_total", "voxroute_active_calls"} <= read  # fmt: skip
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "voxroute.yaml")
    mounts = volume_mounts(compose()["services"]["grafana"])
    assert mounts[provider["providers"][0]["options"]["path"]] == DEPLOY / "grafana" / "dashboards"
    assert mounts["/etc/grafana/provisioning"] == DEPLOY / "grafana" / "provisioning"


# ---------------------------------------------------------------- compose


def volume_mounts(service: dict) -> dict[str, Path]:
    """A compose service's bind mounts: container path -> path on the host (defaults of ${VAR:-x})."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2] if "${" not in volume else _interpolated(volume)
        if source.startswith("."):
            out[target] = (DEPLOY / source).resolve()
    return out


def _interpolated(volume: str) -> tuple[str, str]:
    match = re.fullmatch(r"\$\{\w+:-([^}]+)\}:([^:]+)(?::ro)?", volume)
    assert match, volume
    return match[1], match[2]


def test_compose_file_passes_the_compose_spec_schema():
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    doc = compose()
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, errors
    bad = {**doc, "services": {**doc["services"], "nginx": {**doc["services"]["nginx"], "port": ["1:1"]}}}
    assert not validator.is_valid(bad)  # the schema rejects an unknown field


def test_compose_runs_the_image_command_with_its_secrets_and_no_secret_values():
    doc = compose()
    workers = voxroute_services(doc)
    assert len(workers) == 2
    for name, svc in workers.items():
        assert svc["build"] == {"context": "..", "dockerfile": "Dockerfile"}
        assert svc["entrypoint"][:2] == ["/usr/bin/tini", "--"]
        assert svc["command"] == dockerfile_command(), f"{name}: not the Dockerfile's serve command"
        assert set(svc["secrets"]) <= set(doc["secrets"])
        script = next(t for t, src in volume_mounts(svc).items() if src.name == "voxroute-env.sh")
        assert svc["entrypoint"][2:] == ["/bin/sh", script]
        assert [e["path"] for e in svc["env_file"]] == ["voxroute.env"]
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "/data" in [v.split(":")[1] for v in svc["volumes"]]
    for name, svc in doc["services"].items():
        env = svc.get("environment", {})
        for key, value in env.items():
            if SECRET_NAME.search(key):
                pytest.fail(f"{name}: {key}={value!r} in compose.yaml: a secret belongs in a file")
        for target, source in volume_mounts(svc).items():
            if "tls" not in source.parts and "secrets" not in source.parts:
                assert source.exists(), f"{name}: {source} (mounted at {target}) is not in the repository"
        for secret in svc.get("secrets", []):
            assert doc["secrets"][secret]["file"].startswith("./secrets/")
    ignored = (DEPLOY / ".gitignore").read_text().split()
    assert {"secrets/", "tls/", "voxroute.env"} <= set(ignored)


def test_compose_env_file_and_secrets_cover_what_serve_requires(monkeypatch):
    example = (DEPLOY / "voxroute.env.example").read_text().splitlines()
    pairs = dict(line.split("=", 1) for line in example if line and not line.startswith("#"))
    assert all(value == "" for value in pairs.values()), "the example holds names only"
    script = (DEPLOY / "voxroute-env.sh").read_text()
    exported = set(re.search(r"^export (.+)$", script, re.M)[1].split())
    given = set(pairs) | exported
    assert "VOXROUTE_DATABASE_URL" in given
    for name in [n for n in os.environ if SECRET_NAME.search(n) or n.startswith("VOXROUTE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("VOXROUTE_DATABASE_URL", "postgresql://set")  # as the script sets it
    needed = {env for env, _ in missing_secrets(load_config(ROOT / "examples" / "default.yaml"))}
    assert "VOXROUTE_CALLER_SALT" in needed
    assert needed <= given, f"voxroute serve would refuse to start: {needed - given} not provided"


def run_env_script(tmp_path: Path, secrets: dict[str, str]) -> subprocess.CompletedProcess:
    folder = tmp_path / "secrets"
    folder.mkdir()
    for name, value in secrets.items():
        (folder / name).write_text(value + "\n")
    return subprocess.run(
        ["sh", str(DEPLOY / "voxroute-env.sh"), "env"],
        env={"PATH": os.environ["PATH"], "VOXROUTE_SECRETS_DIR": str(folder)},
        capture_output=True,
        text=True,
        timeout=10,
    )


def test_env_script_turns_the_compose_secrets_into_the_environment(tmp_path):
    postgres = compose()["services"]["postgres"]
    done = run_env_script(tmp_path, {"voxroute_api_key": "k3y", "postgres_password": "0a1b2c"})
    assert done.returncode == 0, done.stderr
    env = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert env["VOXROUTE_API_KEY"] == "k3y"
    user, db = postgres["environment"]["POSTGRES_USER"], postgres["environment"]["POSTGRES_DB"]
    assert env["VOXROUTE_DATABASE_URL"] == f"postgresql://{user}:0a1b2c@postgres:5432/{db}"
    assert "postgres" in compose()["services"]


@pytest.mark.parametrize(
    ("secrets", "says"),
    [
        ({"voxroute_api_key": "k"}, "postgres_password is missing"),
        ({"voxroute_api_key": "", "postgres_password": "p"}, "voxroute_api_key is missing or empty"),
        ({"voxroute_api_key": "k", "postgres_password": "p@ss/word"}, "may hold only"),
    ],
)
def test_env_script_refuses_missing_or_unusable_secrets(tmp_path, secrets, says):
    done = run_env_script(tmp_path, secrets)
    assert done.returncode == 2 and says in done.stderr, (done.returncode, done.stderr)
    assert "VOXROUTE_API_KEY" not in done.stdout  # the command never ran


def test_prometheus_scrapes_each_worker_with_the_operator_key():
    doc = compose()
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    port = flag(dockerfile_command(), "--port")
    (targets,) = job["static_configs"]
    assert sorted(targets["targets"]) == sorted(f"{name}:{port}" for name in voxroute_services(doc))
    key_file = job["authorization"]["credentials_file"]
    assert job["authorization"]["type"] == "Bearer"
    assert key_file.removeprefix("/run/secrets/") in doc["services"]["prometheus"]["secrets"]
    for svc in voxroute_services(doc).values():
        assert key_file.removeprefix("/run/secrets/") in svc["secrets"]
    assert volume_mounts(doc["services"]["prometheus"])["/etc/prometheus/prometheus.yml"] == (
        DEPLOY / "prometheus" / "prometheus.yml"
    )
    (k8s_job,) = load_yaml(DEPLOY / "prometheus" / "k8s-scrape-job.yaml")
    relabelled = {r.get("target_label") for r in k8s_job["relabel_configs"]}
    assert {"namespace", "pod"} <= relabelled  # what the adapter rule maps to pods


# ---------------------------------------------------------------- ingress and secrets


def test_ingress_routes_every_carrier_stream_with_websocket_timeouts():
    carriers = get_args(get_args(TelephonyConfig.model_fields["carriers"].annotation)[0])
    assert get_origin(TelephonyConfig.model_fields["carriers"].annotation) is list and carriers
    streams = {TWILIO_STREAM_PATH, EXOTEL_STREAM_PATH, PLIVO_STREAM_PATH, TELNYX_STREAM_PATH}
    assert streams == {f"/{c}/stream" for c in carriers}
    ingresses = {d["metadata"]["name"]: d for _, d in k8s_docs() if d["kind"] == "Ingress"}
    service = k8s("Service")
    port_names = {p["name"] for p in service["spec"]["ports"]}
    next_upstream = re.compile(
        r"^((error|timeout|invalid_header|http_500|http_502|http_503|http_504|http_403|http_404"
        r"|http_429|non_idempotent|off)\s?)+$"
    )  # ingress-nginx's check of the annotation's value

    def paths(ingress: dict) -> dict[str, str]:
        (rule,) = ingress["spec"]["rules"]
        out = {}
        for p in rule["http"]["paths"]:
            assert p["backend"]["service"]["name"] == service["metadata"]["name"]
            assert p["backend"]["service"]["port"]["name"] in port_names
            out[p["path"]] = p["pathType"]
        return out

    for ingress in ingresses.values():
        notes = ingress["metadata"]["annotations"]
        assert next_upstream.match(notes["nginx.ingress.kubernetes.io/proxy-next-upstream"])
        for key, value in notes.items():
            assert isinstance(value, str), f"{key}: annotation values are strings"
            if key.endswith("-timeout"):
                assert value.isdigit(), f"{key}: {value!r} (seconds)"
        assert ingress["spec"]["tls"][0]["secretName"]
    stream_ingress = ingresses["voxroute-streams"]
    assert paths(stream_ingress) == dict.fromkeys(streams, "Exact")
    # the streams go to the pods' media port: the image's --media-port, by the names that lead there
    (media,) = {
        p["backend"]["service"]["port"]["name"] for p in stream_ingress["spec"]["rules"][0]["http"]["paths"]
    }
    (target,) = [p["targetPort"] for p in service["spec"]["ports"] if p["name"] == media]
    container = k8s("Deployment")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[target] == int(flag(dockerfile_command(), "--media-port"))
    notes = stream_ingress["metadata"]["annotations"]
    for key in ("proxy-read-timeout", "proxy-send-timeout"):  # a call lasts minutes; frames every 20 ms
        assert int(notes[f"nginx.ingress.kubernetes.io/{key}"]) >= 3600
    webhooks = ingresses["voxroute-webhooks"]
    assert paths(webhooks) == {f"/{c}/": "Prefix" for c in carriers}
    # a draining pod answers a new call's set-up webhook 503: the POST goes to the next pod
    assert (
        "non_idempotent"
        in webhooks["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-next-upstream"]
    )
    assert int(webhooks["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]) < 15
    assert paths(ingresses["voxroute"]) == {"/": "Prefix"}


def test_secret_template_has_names_only_and_every_one_serve_requires(monkeypatch):
    template = k8s("Secret", "voxroute-secrets")
    values = template["stringData"]
    assert all(v == "" for v in values.values()), "a template: no values"
    container = k8s("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": "voxroute-secrets"}} in container["envFrom"]
    given = set(values) | {e["name"] for e in container["env"]}
    for name in [n for n in os.environ if SECRET_NAME.search(n) or n.startswith("VOXROUTE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("VOXROUTE_DATABASE_URL", "postgresql://set")  # from the operator's Secret
    needed = {env for env, _ in missing_secrets(load_config(ROOT / "examples" / "default.yaml"))}
    assert needed <= given, f"voxroute serve would refuse to start: {needed - given} not provided"
    for env in container["env"]:
        assert "value" not in env or not SECRET_NAME.search(env["name"]), env["name"]


# ---------------------------------------------------------------- nginx


def self_signed(folder: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    folder.mkdir()
    (folder / "fullchain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "privkey.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def test_compose_nginx_config_parses(tmp_path):
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if nginx is None:
        if services_required():
            pytest.fail("nginx is required (VOXROUTE_REQUIRE_SERVICES=1) but not installed")
        pytest.skip("nginx not installed (apt-get install -y nginx)")
    doc = compose()
    service = doc["services"]["nginx"]
    mounts = volume_mounts(service)
    conf = mounts.pop("/etc/nginx/nginx.conf").read_text()
    (tls_mount,) = [target for target, source in mounts.items() if source.name == "tls"]
    self_signed(tmp_path / "tls")
    mounts[tls_mount] = tmp_path / "tls"  # the certificates the user mounts
    includes = re.findall(r"^\s*include\s+(\S+);", conf, re.M)
    assert includes and all(i in mounts for i in includes), f"{includes}: not mounted into the container"
    port = flag(dockerfile_command(), "--port")
    media_port = flag(dockerfile_command(), "--media-port")
    servers = {}
    for name, at in (("voxroute", port), ("voxroute_media", media_port)):  # webhooks and API; streams
        upstream = re.search(rf"upstream {name} \{{(.*?)\}}", conf, re.S)[1]
        servers[at] = re.findall(r"^\s*server\s+(\S+)", upstream, re.M)
        assert sorted(servers[at]) == sorted(f"{service}:{at}" for service in voxroute_services(doc))
    for container_path, host_path in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
        conf = conf.replace(container_path, str(host_path))
    for at, names in servers.items():  # the compose names resolve only inside compose's network
        for server in names:
            conf = conf.replace(server, f"127.0.0.1:{at}")
    assert not [line for line in conf.splitlines() if "/etc/nginx" in line.split("#")[0]]
    (tmp_path / "nginx.conf").write_text(conf)
    done = subprocess.run(
        [
            nginx,
            "-t",
            "-p",
            str(tmp_path),
            "-e",
            str(tmp_path / "error.log"),
            "-c",
            str(tmp_path / "nginx.conf"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "syntax is ok" in done.stderr
