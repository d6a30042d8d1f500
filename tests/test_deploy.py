"""docker-compose.yml and the Dockerfile, checked as far as a machine without Docker can."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from search.cli import build_parser
from search.study import find_study_file

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
ENV_EXAMPLE = dict(
    line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines() if line and not line.startswith("#")
)


def _expand(text: str) -> str:
    """Compose's ${VAR:-default} / ${VAR:?message} / ${VAR} with .env.example's values."""

    def one(match: re.Match) -> str:
        name, op, rest = match.group(1), match.group(2), match.group(3)
        if name in ENV_EXAMPLE:
            return ENV_EXAMPLE[name]
        assert op == ":-", f"${{{name}}} has no default and is not in .env.example"
        return rest

    return re.sub(r"\$\{(\w+)(:-|:\?)?([^}]*)\}", one, text)


def test_services_postgres_dashboard_and_gpu_workers_on_every_gpu():
    services = COMPOSE["services"]
    assert set(services) == {"postgres", "pgbouncer", "dashboard", "worker"}
    postgres = services["postgres"]
    assert "healthcheck" in postgres and any("/var/lib/postgresql/data" in v for v in postgres["volumes"])
    worker = services["worker"]
    # Every GPU of the machine, with worker processes spread over them by `search run --trials-per-gpu`:
    # replicas that each reserve `count: 1` would all get device 0 (Docker hands out 0..count-1).
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["count"] == "all"
    args = build_parser().parse_args([_expand(a) for a in worker["command"]])
    assert args.trials_per_gpu == int(ENV_EXAMPLE["TRIALS_PER_GPU"]) == 1
    assert args.mps  # packed workers (TRIALS_PER_GPU > 1) run under the container's own MPS daemon
    assert "ports" not in worker
    assert set(worker["depends_on"]) == {"pgbouncer"}  # the database only through PgBouncer
    shared = {v.split(":")[0] for v in worker["volumes"]} & {v.split(":")[0] for v in services["dashboard"]["volumes"]}
    assert "artifacts" in shared  # the dashboard serves the checkpoints the workers store


@pytest.mark.parametrize("service", ["worker", "dashboard"])
def test_commands_are_real_search_commands_on_real_studies(service):
    spec = COMPOSE["services"][service]
    assert spec["entrypoint"] == ["search"]
    args = build_parser().parse_args([_expand(a) for a in spec["command"]])
    assert args.command in ("run", "dashboard")
    assert find_study_file(args.study).is_file()
    storage = make_url(_expand(spec["environment"]["SEARCH_STORAGE"]))
    assert (storage.username, storage.host, storage.port, storage.database) == ("search", "pgbouncer", 6432, "search")


SHIPPED = configparser.ConfigParser(inline_comment_prefixes=(";",))
SHIPPED.read(ROOT / "deploy" / "pgbouncer" / "pgbouncer.ini")
POOL = ("pool_mode", "max_client_conn", "default_pool_size", "reserve_pool_size", "reserve_pool_timeout",
        "idle_transaction_timeout", "server_lifetime", "application_name_add_host")  # fmt: skip


def _pgbouncer_env(env: dict) -> dict:
    """The PgBouncer image's variables, as the settings of pgbouncer.ini they set."""
    return {key: str(env[key.upper()]) for key in POOL}


def test_pgbouncer_in_compose_and_kubernetes_has_the_shipped_pool_settings_in_transaction_mode():
    shipped = {key: SHIPPED["pgbouncer"][key] for key in POOL}
    assert shipped["pool_mode"] == "transaction"
    compose = COMPOSE["services"]["pgbouncer"]
    assert _pgbouncer_env(compose["environment"]) == shipped
    assert compose["environment"]["LISTEN_PORT"] == "6432" and compose["environment"]["DB_HOST"] == "postgres"
    assert int(compose["ulimits"]["nofile"]["soft"]) > int(shipped["max_client_conn"])
    deployment = next(
        d for d in _documents() if d["metadata"]["name"] == "search-pgbouncer" and d["kind"] == "Deployment"
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert _pgbouncer_env(env) == shipped and env["DB_PASSWORD"] is None  # from the Secret, not the file
    password = next(e for e in container["env"] if e["name"] == "DB_PASSWORD")["valueFrom"]["secretKeyRef"]
    assert password == {"name": "search-db", "key": "password"}


def test_password_comes_from_the_environment_never_the_file():
    text = (ROOT / "docker-compose.yml").read_text()
    assert "${POSTGRES_PASSWORD" in text and "POSTGRES_PASSWORD" in ENV_EXAMPLE
    for value in re.findall(r"POSTGRES_PASSWORD:\s*(\S+)", text):
        assert value.startswith("${"), value
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_published_ports_bind_to_loopback():
    for name, spec in COMPOSE["services"].items():
        for port in spec.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)


def test_dockerfile_copies_what_exists_and_runs_search():
    text = (ROOT / "Dockerfile").read_text()
    for source in re.findall(r"^COPY\s+(.+?)\s+\S+$", text, flags=re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path
    assert 'ENTRYPOINT ["search"]' in text and "pip install" in text
    assert COMPOSE["services"]["worker"]["build"] == "."


KUBERNETES = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))


def _documents() -> list[dict]:
    return [doc for path in KUBERNETES for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_kubernetes_manifests_are_valid_for_kubernetes_1_30_and_later():
    """Validated only (no cluster here): each document against Kubernetes' own schemas, strictly,
    so that a misspelt or misplaced field fails as kubectl would refuse it."""
    import kubernetes_validate

    kinds = sorted(f"{doc['kind']}/{doc['metadata']['name']}" for doc in _documents())
    assert kinds == ["Deployment/search-dashboard", "Deployment/search-pgbouncer", "Job/search-workers",
                     "PersistentVolumeClaim/search-artifacts", "PersistentVolumeClaim/search-data",
                     "Service/search-dashboard", "Service/search-pgbouncer"]  # fmt: skip
    for doc in _documents():
        for version in ("1.30.0", "1.37.0"):
            kubernetes_validate.validate(doc, version, strict=True)


def test_kubernetes_pods_run_real_commands_with_the_password_in_a_file_only():
    pods = {
        doc["metadata"]["name"]: doc["spec"]["template"]["spec"]
        for doc in _documents()
        if "template" in doc["spec"]
        and doc["spec"]["template"]["spec"]["containers"][0].get("command", [""])[0] == "search"
    }
    assert set(pods) == {"search-workers", "search-dashboard"}
    job = next(doc for doc in _documents() if doc["kind"] == "Job")
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["parallelism"] == job["spec"]["completions"]
    for name, pod in pods.items():
        container = pod["containers"][0]
        args = build_parser().parse_args(container["command"][1:])
        assert container["command"][0] == "search" and find_study_file(args.study).is_file()
        env = {e["name"]: e["value"] for e in container["env"]}
        storage = env["SEARCH_STORAGE"]
        assert storage == "postgresql+psycopg2://search@search-pgbouncer:6432/search"  # no password, through PgBouncer
        secret = next(v["secret"] for v in pod["volumes"] if "secret" in v)
        mount = next(m for m in container["volumeMounts"] if m["name"] == "password")
        assert env["PGPASSFILE"] == f"{mount['mountPath']}/{secret['items'][0]['path']}"
        assert secret["defaultMode"] == 0o400, name  # libpq ignores a password file that others can read
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        assert "search-artifacts" in claims and env["SEARCH_ARTIFACTS"] == "/artifacts"
    assert pods["search-workers"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
