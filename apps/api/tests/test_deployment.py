"""The deployment files (Dockerfile, .dockerignore, docker-compose.yml, deploy/nginx.conf,
deploy/init-secrets.sh, websocket-deployment.yaml) checked against the code they deploy.

No Docker engine or Kubernetes cluster runs where these tests run, so they check what can be
checked without one: every setting the files give is a real setting that validates, ports, probe
paths, affinity and timeouts agree with the service's, and the service started as the image's CMD
with the files' environment serves /health and /ready, and passes the files' health checks."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import ipaddress
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx
import pytest
import uvicorn
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from apps.api.config import DEFAULT_SECRETS_DIR, Settings
from apps.api.tests.redis_support import RedisProcess, isolation
from apps.api.tests.support import (
    REPO_ROOT,
    TEST_SECRET,
    WsClient,
    eventually,
    free_port,
    make_token,
    start_server_process,
)

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
K8S_FILE = REPO_ROOT / "websocket-deployment.yaml"
NGINX_CONF = REPO_ROOT / "deploy" / "nginx.conf"
INIT_SECRETS = REPO_ROOT / "deploy" / "init-secrets.sh"

IMAGE = "swe-api"
PORT = 8000
#: Environment variable names the service reads: Settings' fields, upper-cased.
SETTINGS_ENV = {name.upper() for name in Settings.model_fields}
#: Variables the files may set that Settings does not read, and who reads them.
OTHER_ENV = {"FORWARDED_ALLOW_IPS": "uvicorn", "REDIS_PASSWORD": "Kubernetes, for $(REDIS_PASSWORD) in REDIS_URL"}
#: The Engine.IO heartbeat: a proxy must not cut a connection idle for less than this.
HEARTBEAT_SECONDS = Settings.model_fields["ping_interval_seconds"].default + (
    Settings.model_fields["ping_timeout_seconds"].default
)
MAX_PAYLOAD_BYTES = Settings.model_fields["max_payload_bytes"].default
REDIS_TIMEOUT_SECONDS = Settings.model_fields["redis_timeout_seconds"].default
SHUTDOWN_TIMEOUT_DEFAULT = Settings.model_fields["shutdown_timeout_seconds"].default
#: A secret as websocket-deployment.yaml says to make one: openssl rand -hex 32.
PRODUCTION_SECRET = "0123456789abcdef" * 4
#: The Secret websocket-deployment.yaml's header says to create, as `kubectl create secret` would.
K8S_SECRETS = {
    "swe-api-secrets": {
        "jwt-secret-key": PRODUCTION_SECRET,
        "redis-password": "fedcba9876543210" * 4,
        "database-url": "postgresql+asyncpg://events:pw@db.example:5432/events",
    }
}


# --- reading the files -------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue  # comments, also inside a continued instruction, as Docker reads them
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, arguments = current.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return instructions


def dockerfile_args(keyword: str) -> list[str]:
    return [arguments for key, arguments in dockerfile() if key == keyword]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for arguments in dockerfile_args("ENV"):
        for item in shlex.split(arguments):
            name, sep, value = item.partition("=")
            assert sep, f"ENV {item!r}: use the NAME=value form"
            env[name] = value
    return env


def dockerfile_cmd() -> list[str]:
    (cmd,) = dockerfile_args("CMD")
    return list(json.loads(cmd))  # exec form: JSON, so no shell sits between Docker's SIGTERM and uvicorn


def dockerfile_healthcheck() -> list[str]:
    (healthcheck,) = dockerfile_args("HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    assert all(option.startswith("--") for option in options.split()), healthcheck
    return list(json.loads(command))


def dockerignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def docker_ignores(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` out of the build context: a pattern matches the path or one
    of its parent directories (``**/`` matches any number of leading directories)."""
    assert not any(p.startswith("!") for p in patterns), "exceptions (!...) are not modelled here"
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in (p.rstrip("/") for p in patterns):
        for prefix in prefixes:
            if fnmatch(prefix, pattern):
                return True
            if pattern.startswith("**/"):
                segments = prefix.split("/")
                if any(fnmatch("/".join(segments[j:]), pattern[3:]) for j in range(len(segments))):
                    return True
    return False


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE_FILE.read_text()))


_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def interpolate(value: object, environ: dict[str, str] | None = None) -> str:
    """A compose value as ``docker-compose up`` sees it, from a shell that sets nothing (``${X:-d}``
    gives ``d``), so: what runs with no setup at all."""
    assert isinstance(value, str), f"compose environment values must be strings: {value!r}"
    environ = environ or {}
    result = _INTERPOLATION.sub(lambda m: environ.get(m["name"]) or m["default"] or "", value)
    assert "$" not in result, f"interpolation not understood here: {value!r}"
    return result


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    assert isinstance(environment, dict), "use the mapping form of environment:"
    return {name: interpolate(value) for name, value in environment.items()}


def app_services(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The compose services that run this service's image."""
    return {name: svc for name, svc in spec["services"].items() if svc.get("image") == IMAGE}


def k8s_documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(K8S_FILE.read_text()) if doc is not None]


def k8s(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in k8s_documents() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''} in {K8S_FILE.name}, found {len(found)}"
    return found[0]


def api_deployment() -> dict[str, Any]:
    return k8s("Deployment", "swe-api")


def api_container() -> dict[str, Any]:
    (container,) = api_deployment()["spec"]["template"]["spec"]["containers"]
    return container


def config_map() -> dict[str, str]:
    (ref,) = api_container()["envFrom"]
    return dict(k8s("ConfigMap", ref["configMapRef"]["name"])["data"])


_K8S_REFERENCE = re.compile(r"\$\$|\$\((?P<name>[A-Za-z_][A-Za-z0-9_]*)\)")


def container_env(container: dict[str, Any], secrets: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
    """A container's environment as the kubelet makes it: ``envFrom`` ConfigMaps, then ``env`` in
    order, ``secretKeyRef`` read from ``secrets`` (an optional one that is missing is left out),
    and ``$(NAME)`` replaced by an earlier variable (``$$`` is a ``$``; an unknown name stays)."""
    secrets = K8S_SECRETS if secrets is None else secrets
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(k8s("ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        if "value" in item:
            value = _K8S_REFERENCE.sub(lambda m: "$" if m[0] == "$$" else env.get(m["name"], m[0]), str(item["value"]))
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            found = secrets.get(ref["name"], {}).get(ref["key"])
            if found is None:
                assert ref.get("optional"), f"{item['name']}: Secret {ref['name']} has no key {ref['key']}"
                continue
            value = found
        env[item["name"]] = value
    return env


def expand_args(args: list[str], env: dict[str, str]) -> list[str]:
    """A container's ``args`` with ``$(NAME)`` replaced from its environment, as the kubelet does."""
    return [_K8S_REFERENCE.sub(lambda m: "$" if m[0] == "$$" else env.get(m["name"], m[0]), arg) for arg in args]


def named_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def seconds(duration: str | int) -> float:
    """``30s``, ``1m``, ``3600`` (compose, nginx and ingress-nginx durations) in seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", str(duration).strip())
    assert match, f"duration not understood: {duration!r}"
    factor = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[match[2]]
    return float(match[1]) * factor


def size_bytes(size: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", size.strip())
    assert match, f"size not understood: {size!r}"
    return int(match[1]) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match[2].lower()]


NginxBlock = list[tuple[list[str], Any]]


def nginx_conf() -> NginxBlock:
    """deploy/nginx.conf as a tree: a block is a list of (words, sub-block or None for a directive)."""
    text = re.sub(r"#[^\n]*", "", NGINX_CONF.read_text())
    tokens = re.findall(r"[{};]|[^\s{};]+", text)

    def parse(i: int, depth: int) -> tuple[NginxBlock, int]:
        items: NginxBlock = []
        words: list[str] = []
        while i < len(tokens):
            token = tokens[i]
            i += 1
            if token == ";":
                items.append((words, None))
                words = []
            elif token == "{":
                block, i = parse(i, depth + 1)
                items.append((words, block))
                words = []
            elif token == "}":
                assert depth > 0 and not words, "unbalanced braces or a missing ';' in nginx.conf"
                return items, i
            else:
                words.append(token)
        assert depth == 0 and not words, "unclosed block or a missing ';' in nginx.conf"
        return items, i

    return parse(0, 0)[0]


def nginx_block(*path: str) -> NginxBlock:
    """The block reached by headers (``"http"``, ``"server"``, ``"location /"``); ``"upstream"``
    or ``"map"`` alone match whatever follows the keyword."""
    block = nginx_conf()
    for header in path:
        found = [sub for words, sub in block if sub is not None and header in (" ".join(words), words[0])]
        assert len(found) == 1, f"expected one '{header}' block in nginx.conf, found {len(found)}"
        block = found[0]
    return block


def nginx_headers(*path: str) -> list[str]:
    return [" ".join(words) for words, sub in nginx_block(*path) if sub is not None]


def nginx_directives(*path: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for words, sub in nginx_block(*path):
        if sub is None:
            directives.setdefault(words[0], []).append(" ".join(words[1:]))
    return directives


def settings_from_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    """Settings exactly as the service reads these environment variables (and nothing else: no
    secret files unless ``env`` names a SECRETS_DIR)."""
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SECRETS_DIR", "")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def secrets_service() -> dict[str, Any]:
    service: dict[str, Any] = compose()["services"]["secrets"]
    return service


def mount_of(service: dict[str, Any], volume: str) -> tuple[str, str]:
    """Where ``service`` mounts the named ``volume``: (path, options)."""
    found = [v.split(":") for v in service.get("volumes", []) if v.split(":")[0] == volume]
    assert len(found) == 1, f"expected one mount of {volume}: {service.get('volumes')}"
    path, *options = found[0][1:]
    return path, ",".join(options)


def run_init_secrets(directory: Path, environ: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The compose service `secrets`, run here: its command (the script it mounts, mapped back to
    deploy/), its environment as `docker-compose up` gives it from a shell with ``environ``, and
    ``directory`` in place of the volume. The files belong to this user (the image's 10001 and
    postgres's 70 need root to give them to)."""
    service = secrets_service()
    command = list(service["command"])
    mounted = {target: source for source, target, *_ in (v.split(":") for v in service["volumes"]) if source[0] == "."}
    volume_path, _ = mount_of(service, "secrets")
    command = [str(REPO_ROOT / mounted[arg]) if arg in mounted else arg for arg in command]
    command = [str(directory) if arg == volume_path else arg for arg in command]
    assert command[0] == "sh" and shutil.which("sh"), command
    env = {name: interpolate(value, environ or {}) for name, value in service["environment"].items()}
    owner = f"{os.getuid()}:{os.getgid()}"
    env.update({"PATH": os.environ.get("PATH", ""), "SECRETS_API_OWNER": owner, "SECRETS_POSTGRES_OWNER": owner})
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30, check=True)


def read_secret(directory: Path, name: str) -> str:
    return (directory / name).read_text().strip()


# --- NetworkPolicies, evaluated as the API defines them ------------------------------------------

#: The namespace everything is applied in (the manifest names none: the current one).
NAMESPACE = {"kubernetes.io/metadata.name": "events"}


@dataclass
class Peer:
    """One end of a connection: a pod (its labels and its namespace's) or an address outside."""

    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    namespace: dict[str, str] = dataclasses.field(default_factory=lambda: dict(NAMESPACE))
    ip: str | None = None  # set: an address outside the cluster

    @property
    def is_pod(self) -> bool:
        return self.ip is None


def network_policies() -> list[dict[str, Any]]:
    return [doc for doc in k8s_documents() if doc["kind"] == "NetworkPolicy"]


def policy_types(policy: dict[str, Any]) -> list[str]:
    spec = policy["spec"]
    return list(spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else [])))


def label_selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"matchExpressions are not modelled here: {selector}"
    return selects(selector.get("matchLabels", {}), labels)


def peer_matches(rule_peer: dict[str, Any], peer: Peer) -> bool:
    if "ipBlock" in rule_peer:
        if peer.is_pod:  # for pod addresses ipBlock is up to the network plugin: never counted on here
            return False
        block = rule_peer["ipBlock"]
        address = ipaddress.ip_address(peer.ip or "")
        network = ipaddress.ip_network(block["cidr"])
        excepted = [ipaddress.ip_network(e) for e in block.get("except", [])]
        return (
            address.version == network.version
            and address in network
            and not any(address.version == e.version and address in e for e in excepted)
        )
    if not peer.is_pod:
        return False
    pods, namespaces = rule_peer.get("podSelector"), rule_peer.get("namespaceSelector")
    if namespaces is None and not selects(NAMESPACE, peer.namespace):
        return False  # a podSelector alone selects pods of the policy's own namespace
    if namespaces is not None and not label_selector_matches(namespaces, peer.namespace):
        return False
    return pods is None or label_selector_matches(pods, peer.labels)


def port_matches(rule_ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    if not rule_ports:
        return True
    for entry in rule_ports:
        assert isinstance(entry.get("port"), int), f"give NetworkPolicy ports as numbers: {entry}"
        if entry.get("protocol", "TCP") == protocol and entry["port"] <= port <= entry.get("endPort", entry["port"]):
            return True
    return False


def allowed_by(direction: str, pod: Peer, other: Peer, port: int, protocol: str) -> bool:
    """Whether ``pod``'s policies allow the connection in ``direction`` ("Ingress": ``other``
    connects to ``pod``; "Egress": ``pod`` connects to ``other``), on ``port``."""
    applying = [
        policy
        for policy in network_policies()
        if direction in policy_types(policy) and label_selector_matches(policy["spec"]["podSelector"], pod.labels)
    ]
    if not pod.is_pod or not selects(NAMESPACE, pod.namespace) or not applying:
        return True  # not isolated in that direction (or not ours)
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in applying:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if (not peers or any(peer_matches(p, other) for p in peers)) and port_matches(
                rule.get("ports"), port, protocol
            ):
                return True
    return False


def connects(source: Peer, destination: Peer, port: int, protocol: str = "TCP") -> bool:
    """Both ends' policies allow ``source`` to open a connection to ``destination``:``port``."""
    return allowed_by("Egress", source, destination, port, protocol) and allowed_by(
        "Ingress", destination, source, port, protocol
    )


def pod_of(kind: str, name: str) -> Peer:
    return Peer(labels=dict(k8s(kind, name)["spec"]["template"]["metadata"]["labels"]))


# --- Dockerfile and .dockerignore --------------------------------------------------------------


def test_dockerfile_builds_the_runtime_image_and_runs_main_py():
    instructions = dockerfile()
    assert dockerfile_args("FROM") == ["python:3.11-slim"]
    assert dockerfile_args("WORKDIR") == ["/app"]
    assert dockerfile_cmd() == ["python", "apps/api/main.py"]
    assert not dockerfile_args("ENTRYPOINT")

    keywords = [key for key, _ in instructions]
    installs = [i for i, (key, args) in enumerate(instructions) if key == "RUN" and "pip install" in args]
    assert len(installs) == 1
    install = instructions[installs[0]][1]
    assert re.search(r"pip install (.* )?-r requirements\.txt\b", install), install
    assert not any("requirements-dev" in args for _, args in instructions)  # no tests or lint in the image
    copies = {i: shlex.split(args) for i, (key, args) in enumerate(instructions) if key == "COPY"}
    assert any(args == ["requirements.txt", "./"] and i < installs[0] for i, args in copies.items())
    # apps/ lands in /app/apps, where CMD's relative path and main.py's sys.path fix expect it
    assert ["apps/", "./apps/"] in copies.values()

    env = dockerfile_env()
    assert env["ENVIRONMENT"] == "production"  # production unless told otherwise (-e ENVIRONMENT=...)
    assert env["LOG_FILE"] == ""  # stderr only
    assert env["HOST"] == "0.0.0.0"
    assert int(env["PORT"]) == PORT == Settings.model_fields["port"].default
    assert dockerfile_args("EXPOSE") == [str(PORT)]
    for name in env:
        assert name in SETTINGS_ENV or name.startswith(("PYTHON", "PIP_")), f"ENV {name} is read by nothing"

    # The process runs as a non-root user with a numeric id (Kubernetes' runAsNonRoot checks it).
    (user,) = dockerfile_args("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0)
    assert keywords.index("USER") > max(i for i, key in enumerate(keywords) if key == "RUN")
    assert keywords.index("USER") < keywords.index("CMD")
    assert f"--uid {uid}" in DOCKERFILE.read_text()  # the user exists in the image

    healthcheck = dockerfile_healthcheck()
    assert healthcheck[0] == "python" and "/health'" in healthcheck[-1]


def test_python_version_of_the_image_is_one_the_project_supports():
    (base,) = dockerfile_args("FROM")
    version = tuple(int(part) for part in base.split(":")[1].split("-")[0].split("."))
    requires = re.search(r'requires-python = ">=(\d+)\.(\d+)"', (REPO_ROOT / "pyproject.toml").read_text())
    assert requires and version >= (int(requires[1]), int(requires[2]))


def test_dockerignore_leaves_out_local_state_but_not_what_the_image_needs():
    patterns = dockerignore_patterns()
    for path in (
        ".venv/bin/python",
        "node_modules/socket.io-client/package.json",
        "apps/api/tests/js/node_modules/x.js",
        ".git/HEAD",
        "logs/app.log",
        ".env",
        "apps/api/__pycache__/main.cpython-311.pyc",
        ".pytest_cache/README.md",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/CACHEDIR.TAG",
    ):
        assert docker_ignores(path, patterns), f"{path} would be sent to the Docker build"
    needed = ["requirements.txt"] + [
        str(path.relative_to(REPO_ROOT))
        for path in (REPO_ROOT / "apps").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and "node_modules" not in path.parts
    ]
    assert "apps/api/main.py" in needed
    for path in needed:
        assert not docker_ignores(path, patterns), f"{path} is needed by the image but .dockerignore drops it"


def test_the_dockerignore_matcher_can_tell():
    assert docker_ignores("a/b/c.pyc", ["**/*.pyc"]) and docker_ignores("logs/x", ["logs"])
    assert not docker_ignores("apps/logs.py", ["logs"]) and not docker_ignores("apps/x.py", ["**/*.pyc"])


# --- docker-compose.yml ------------------------------------------------------------------------


def test_compose_runs_redis_with_persistence_and_a_healthcheck():
    redis = compose()["services"]["redis"]
    assert redis["image"] == "redis:7-alpine"
    command = redis["command"]
    assert command[0] == "redis-server" and command[command.index("--appendonly") + 1] == "yes"
    volume, _, target = redis["volumes"][0].partition(":")
    assert target == "/data" and volume in compose()["volumes"]  # a named volume keeps the AOF
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "ports" not in redis  # not published on the host


def test_compose_api_builds_the_image_and_waits_for_redis():
    spec = compose()
    api = spec["services"]["api"]
    assert api["build"] == "."
    assert api["image"] == IMAGE
    assert api["ports"] == [f"{PORT}:{PORT}"]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api["depends_on"]["secrets"]["condition"] == "service_completed_successfully"
    assert "command" not in api and "entrypoint" not in api  # it runs the image's CMD


def test_plain_compose_up_starts_secrets_redis_postgres_and_api_only():
    spec = compose()
    default = {name for name, svc in spec["services"].items() if not svc.get("profiles")}
    assert default == {"secrets", "redis", "postgres", "api"}
    for name in default:
        assert set(spec["services"][name].get("depends_on", {})) <= default
    published = [p.split(":")[0] for svc in spec["services"].values() for p in svc.get("ports", [])]
    assert len(published) == len(set(published)), "two services publish the same host port"


@pytest.mark.parametrize("name", sorted(app_services(compose())))
def test_compose_settings_are_real_settings_and_reach_the_redis_service(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    spec = compose()
    service = spec["services"][name]
    env = compose_environment(service)
    for variable in env:
        assert variable in SETTINGS_ENV, f"{name} sets {variable}, which the service does not read"
    url = urlsplit(env["REDIS_URL"])
    assert url.scheme == "redis" and url.hostname in spec["services"] and url.port == 6379
    assert spec["services"][url.hostname]["image"].startswith("redis:")
    assert service["depends_on"][url.hostname]["condition"] == "service_healthy"

    # The secrets: files in the `secrets` volume, at the directory the service reads by default,
    # written before it starts; no variable of the environment would hide them.
    assert mount_of(service, "secrets") == (DEFAULT_SECRETS_DIR, "ro")
    assert service["depends_on"]["secrets"]["condition"] == "service_completed_successfully"
    assert not {"JWT_SECRET_KEY", "DATABASE_URL", "SECRETS_DIR"} & set(env)
    secrets = tmp_path / "secrets"
    run_init_secrets(secrets)

    # every instance shares one PostgreSQL, which keeps its data in a volume, and its password
    # in the secrets volume: the same as in the api's DATABASE_URL
    settings = settings_from_env(monkeypatch, {**env, "SECRETS_DIR": str(secrets)})
    database = urlsplit(settings.database_url)
    assert database.scheme == "postgresql+asyncpg" and database.hostname in spec["services"]
    postgres = spec["services"][database.hostname]
    assert postgres["image"].startswith("postgres:") and service["depends_on"][database.hostname]["condition"] == (
        "service_healthy"
    )
    assert postgres["volumes"][0].split(":")[0] in spec["volumes"] and "ports" not in postgres
    pg_env = {k: interpolate(str(v), {}) for k, v in postgres["environment"].items()}
    assert "POSTGRES_PASSWORD" not in pg_env
    mounted, _ = mount_of(postgres, "secrets")
    password_file = Path(pg_env["POSTGRES_PASSWORD_FILE"])
    assert password_file.parent == Path(mounted)
    assert (database.username, database.password, database.path, database.port) == (
        pg_env["POSTGRES_USER"],
        read_secret(secrets, password_file.name),
        "/" + pg_env["POSTGRES_DB"],
        5432,
    )
    assert "build" in service or any("build" in spec["services"][dep] for dep in service["depends_on"])

    # The values as `docker-compose up` gives them, with no setup: they validate and run in production.
    assert settings.environment == "production" and settings.log_file is None and settings.workers == 1
    assert settings.jwt_secret_key.get_secret_value() == read_secret(secrets, "jwt_secret_key")
    assert "*" not in settings.cors_origins
    assert seconds(service["stop_grace_period"]) > settings.shutdown_timeout_seconds

    healthcheck = service["healthcheck"]
    assert healthcheck["test"][:2] == ["CMD", "python"] and "/ready'" in healthcheck["test"][-1]
    assert seconds(healthcheck["timeout"]) > REDIS_TIMEOUT_SECONDS  # /ready's Redis ping is bounded by it


#: What the compose file may take from the shell, and what happens with nothing set.
_DEFAULTED = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*):?-(?P<default>[^}]*)\}")
SECRET_NAMES = ("JWT_SECRET_KEY", "POSTGRES_PASSWORD", "DATABASE_URL", "GITHUB_WEBHOOK_SECRET", "REDIS_URL")


def test_compose_holds_no_secret_and_defaults_to_production():
    """No secret value is written in the file, as a value or as a default: secrets come from the
    shell or .env when given, else from the `secrets` volume. What is defaulted is production."""
    text = COMPOSE_FILE.read_text()
    for match in _DEFAULTED.finditer(text):
        if any(word in match["name"] for word in ("SECRET", "PASSWORD", "KEY", "TOKEN")):
            assert match["default"] == "", f"{match[0]}: a secret's default is written in the file"
    assert "ENVIRONMENT: ${ENVIRONMENT:-production}" in text
    assert "development-only" not in text and "change-me" not in text
    spec = compose()
    for name, service in spec["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            if variable in SECRET_NAMES and variable != "REDIS_URL":
                assert interpolate(value) == "", f"{name}: {variable} has a value in the file"
            if variable == "REDIS_URL":
                assert urlsplit(interpolate(value)).password is None
    # a secret given in the shell goes through the one-shot service, never straight to the api
    given = secrets_service()["environment"]
    assert given["JWT_SECRET_KEY"] == "${JWT_SECRET_KEY:-}" and given["POSTGRES_PASSWORD"] == "${POSTGRES_PASSWORD:-}"


def test_compose_secrets_service_writes_the_volume_once_before_the_others_start():
    spec = compose()
    service = secrets_service()
    assert service["image"].startswith("alpine:")  # sh, od, chown: busybox
    assert service["restart"] == "no" and service.get("network_mode") == "none"  # it needs no network
    assert "secrets" in spec["volumes"] and mount_of(service, "secrets")[1] == ""  # read-write here only
    script = [v.split(":") for v in service["volumes"] if v.startswith("./")]
    assert script == [["./deploy/init-secrets.sh", service["command"][1], "ro"]]
    assert (REPO_ROOT / script[0][0]).is_file()
    assert service["command"][2] == mount_of(service, "secrets")[0]
    for name in ("postgres", *app_services(spec)):
        other = spec["services"][name]
        assert other["depends_on"]["secrets"]["condition"] == "service_completed_successfully", name
        assert mount_of(other, "secrets")[1] == "ro", name
    # what the script builds DATABASE_URL from is the database postgres creates
    postgres = spec["services"]["postgres"]["environment"]
    assert (service["environment"]["POSTGRES_USER"], service["environment"]["POSTGRES_DB"]) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_DB"],
    )
    assert service["environment"]["POSTGRES_HOST"] == "postgres"


def test_init_secrets_generates_once_keeps_and_lets_the_shell_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    directory = tmp_path / "volume"
    first = run_init_secrets(directory)
    generated = {name: read_secret(directory, name) for name in ("jwt_secret_key", "postgres_password")}
    for value in generated.values():
        assert re.fullmatch(r"[0-9a-f]{64}", value)  # 32 random bytes, as openssl rand -hex 32
    assert generated["jwt_secret_key"] != generated["postgres_password"]
    assert "jwt_secret_key generated" in first.stdout and "postgres_password generated" in first.stdout

    # each reader, and only it, can read its files; nothing else is left in the volume
    for name in ("jwt_secret_key", "postgres_password", "database_url"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o400, name
    assert sorted(path.name for path in directory.iterdir()) == ["database_url", "jwt_secret_key", "postgres_password"]

    again = run_init_secrets(directory)  # the next `docker-compose up`
    assert {name: read_secret(directory, name) for name in generated} == generated
    assert "jwt_secret_key kept" in again.stdout and "postgres_password kept" in again.stdout

    odd = "p@ss:w/rd %&?#"
    given = run_init_secrets(directory, {"JWT_SECRET_KEY": PRODUCTION_SECRET, "POSTGRES_PASSWORD": odd})
    assert read_secret(directory, "jwt_secret_key") == PRODUCTION_SECRET
    assert read_secret(directory, "postgres_password") == odd
    assert "set from the environment" in given.stdout
    settings = settings_from_env(monkeypatch, {"ENVIRONMENT": "production", "SECRETS_DIR": str(directory)})
    url = urlsplit(settings.database_url)
    assert url.password is not None and unquote(url.password) == odd  # percent-encoded in the URL
    from sqlalchemy.engine import make_url

    assert make_url(settings.database_url).password == odd  # as the service's engine reads it
    assert settings.jwt_secret_key.get_secret_value() == PRODUCTION_SECRET

    for run in (first, again, given):  # the script never prints a secret
        for secret in (*generated.values(), PRODUCTION_SECRET, odd, quote(odd, safe="")):
            assert secret not in run.stdout + run.stderr


def test_compose_scaled_profile_puts_nginx_in_front_of_every_instance():
    spec = compose()
    nginx = spec["services"]["nginx"]
    assert nginx["profiles"] == ["scaled"]
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    instances = set(app_services(spec))
    assert len(instances) >= 2 and set(nginx["depends_on"]) == instances
    assert all(dep["condition"] == "service_healthy" for dep in nginx["depends_on"].values())

    (upstream,) = [header for header in nginx_headers("http") if header.startswith("upstream ")]
    directives = nginx_directives("http", upstream)
    assert "ip_hash" in directives or any(v.startswith("$remote_addr") for v in directives.get("hash", []))
    assert set(directives["server"]) == {f"{name}:{PORT}" for name in instances}


# --- deploy/nginx.conf -------------------------------------------------------------------------


def test_nginx_forwards_websocket_upgrades_with_long_timeouts():
    (upstream,) = [header for header in nginx_headers("http") if header.startswith("upstream ")]
    directives = nginx_directives("http", "server", "location /")
    assert directives["proxy_pass"] == [f"http://{upstream.split()[1]}"]
    assert directives["proxy_http_version"] == ["1.1"]
    headers = dict(value.split(maxsplit=1) for value in directives["proxy_set_header"])
    assert headers["Upgrade"] == "$http_upgrade"
    assert headers["Connection"] == "$connection_upgrade"
    assert nginx_directives("http", "map $http_upgrade $connection_upgrade") == {
        "default": ["upgrade"],
        "''": ["close"],
    }
    for timeout in ("proxy_read_timeout", "proxy_send_timeout"):
        assert seconds(directives[timeout][0]) > HEARTBEAT_SECONDS
    assert directives["proxy_buffering"] == ["off"]  # long-polling responses delivered at once
    body_size = nginx_directives("http", "server")["client_max_body_size"][0]
    assert size_bytes(body_size) > MAX_PAYLOAD_BYTES
    assert nginx_directives("http", "server")["listen"] == ["80"]
    nginx = compose()["services"]["nginx"]
    assert any(port.endswith(":80") for port in nginx["ports"])


# --- websocket-deployment.yaml -----------------------------------------------------------------


def test_k8s_manifest_is_in_the_current_namespace_and_holds_no_secret():
    documents = k8s_documents()
    kinds = [doc["kind"] for doc in documents]
    assert {"ConfigMap", "Deployment", "Service", "Ingress", "StatefulSet"} <= set(kinds)
    assert "Secret" not in kinds and "Namespace" not in kinds
    for doc in documents:
        assert doc["apiVersion"] and doc["metadata"]["name"]
        assert "namespace" not in doc["metadata"]
        # kubectl rejects labels, annotations and ConfigMap data that are not strings
        for field in ("labels", "annotations"):
            assert all(isinstance(v, str) for v in doc["metadata"].get(field, {}).values()), doc["metadata"]
    assert all(isinstance(value, str) for value in config_map().values())

    # The Secret is created by hand, as the comment at the top says, with the names the Deployment reads.
    (secret_env,) = [e for e in api_container()["env"] if e["name"] == "JWT_SECRET_KEY"]
    ref = secret_env["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("swe-api-secrets", "jwt-secret-key")
    header = K8S_FILE.read_text().split("\n---", 1)[0]
    assert f"kubectl create secret generic {ref['name']} --from-literal={ref['key']}=" in header
    # the database URL holds a password: from the same Secret, documented beside it
    (database_env,) = [e for e in api_container()["env"] if e["name"] == "DATABASE_URL"]
    ref = database_env["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("swe-api-secrets", "database-url")
    assert '--from-literal=database-url="postgresql+asyncpg://' in header
    assert "DATABASE_URL" not in config_map()
    assert "openssl rand -hex 32" in header  # 32 random bytes: long enough for production
    # Redis's password: from the same Secret, for Redis and for the api's REDIS_URL; never in the
    # ConfigMap, and in the Deployment only as $(REDIS_PASSWORD)
    assert '--from-literal=redis-password="$(openssl rand -hex 32)"' in header
    assert "REDIS_URL" not in config_map() and "REDIS_PASSWORD" not in config_map()
    (password_env,) = [e for e in api_container()["env"] if e["name"] == "REDIS_PASSWORD"]
    ref = password_env["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("swe-api-secrets", "redis-password") and not ref.get("optional")
    (url_env,) = [e for e in api_container()["env"] if e["name"] == "REDIS_URL"]
    assert urlsplit(url_env["value"]).password == "$(REDIS_PASSWORD)"
    # $(NAME) is replaced only by a variable defined before it in the list
    names = [e["name"] for e in api_container()["env"]]
    assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL")


def test_k8s_settings_are_real_settings_and_valid_in_production(monkeypatch: pytest.MonkeyPatch):
    data = config_map()
    names = set(data) | {e["name"] for e in api_container()["env"]}
    for name in names:
        assert name in SETTINGS_ENV or name in OTHER_ENV, f"{name} is read by nothing"
    env = container_env(api_container())  # the ConfigMap, the Secret's values, $(REDIS_PASSWORD) replaced
    assert "$(" not in "".join(env.values())
    settings = settings_from_env(monkeypatch, env)
    assert settings.environment == "production"
    assert settings.jwt_secret_key.get_secret_value() == K8S_SECRETS["swe-api-secrets"]["jwt-secret-key"]
    redis = urlsplit(settings.redis_url or "")
    assert redis.password == K8S_SECRETS["swe-api-secrets"]["redis-password"] and redis.hostname == "swe-redis"
    assert settings.log_file is None
    assert "*" not in settings.cors_origins
    # Per-pod affinity cannot reach separate worker processes of one pod: one worker, more replicas.
    assert settings.workers == 1


def test_forwarded_allow_ips_is_read_by_uvicorn(monkeypatch: pytest.MonkeyPatch):
    assert OTHER_ENV["FORWARDED_ALLOW_IPS"] == "uvicorn"
    assert set(OTHER_ENV) == {"FORWARDED_ALLOW_IPS", "REDIS_PASSWORD"}
    assert all(name not in SETTINGS_ENV for name in OTHER_ENV)
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")
    assert uvicorn.Config(app=None).forwarded_allow_ips == "*"


def test_k8s_deployment_probes_ports_and_shutdown():
    deployment = api_deployment()
    pod = deployment["spec"]["template"]
    container = api_container()
    assert deployment["spec"]["replicas"] == 3
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    assert container["image"] == IMAGE
    # a local image: the default for an untagged image (Always) would try to pull it from Docker Hub
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert "command" not in container and "args" not in container  # it runs the image's CMD
    assert [named_port(container, p["containerPort"]) for p in container["ports"]] == [PORT]

    probes = {kind: container[kind] for kind in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/health"
    assert probes["startupProbe"]["httpGet"]["path"] == "/health"
    for probe in probes.values():
        assert named_port(container, probe["httpGet"]["port"]) == PORT
        assert probe["timeoutSeconds"] > REDIS_TIMEOUT_SECONDS  # /health and /ready ping Redis within it

    shutdown = float(config_map().get("SHUTDOWN_TIMEOUT_SECONDS", SHUTDOWN_TIMEOUT_DEFAULT))
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    pause = float(pre_stop[1]) if pre_stop[0] == "sleep" else 0.0
    assert pod["spec"]["terminationGracePeriodSeconds"] > shutdown + pause
    assert "resources" in container and container["resources"]["limits"]["memory"]


def test_k8s_api_runs_as_the_images_non_root_user():
    pod_security = api_deployment()["spec"]["template"]["spec"]["securityContext"]
    container_security = api_container()["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    (user,) = dockerfile_args("USER")
    assert pod_security["runAsUser"] == int(user.split(":")[0]) != 0
    assert container_security["allowPrivilegeEscalation"] is False
    assert container_security["capabilities"]["drop"] == ["ALL"]
    if container_security.get("readOnlyRootFilesystem"):
        assert dockerfile_env()["LOG_FILE"] == "" and config_map().get("LOG_FILE", "") == ""


def test_k8s_redis_is_persistent_and_is_what_redis_url_names():
    url = urlsplit(container_env(api_container())["REDIS_URL"])
    service = k8s("Service", url.hostname)
    statefulset = k8s("StatefulSet", url.hostname)
    (port,) = service["spec"]["ports"]
    assert url.scheme == "redis" and url.port == port["port"]
    pod = statefulset["spec"]["template"]
    assert selects(service["spec"]["selector"], pod["metadata"]["labels"])
    assert selects(statefulset["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    (container,) = pod["spec"]["containers"]
    assert container["image"].startswith("redis:7")
    assert named_port(container, port["targetPort"]) == 6379
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]


def test_k8s_redis_requires_the_password_the_api_connects_with():
    """Redis's requirepass and the password in the api's REDIS_URL are the Secret's one key; the
    readiness probe's redis-cli authenticates with it too (REDISCLI_AUTH)."""
    (container,) = k8s("StatefulSet", "swe-redis")["spec"]["template"]["spec"]["containers"]
    assert "command" not in container  # the image's entrypoint: it drops to the redis user
    env = container_env(container)
    args = expand_args(container["args"], env)
    assert args[0] == "redis-server"
    password = K8S_SECRETS["swe-api-secrets"]["redis-password"]
    assert args[args.index("--requirepass") + 1] == password
    assert container["args"][container["args"].index("--requirepass") + 1] == "$(REDIS_PASSWORD)"  # not the value
    assert env["REDISCLI_AUTH"] == password
    assert "redis-cli ping" in " ".join(container["readinessProbe"]["exec"]["command"])
    api_password = urlsplit(container_env(api_container())["REDIS_URL"]).password
    assert api_password == password


async def test_k8s_redis_and_api_with_the_manifests_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """redis-server started with the StatefulSet's arguments, and the service as the image starts
    it with the Deployment's environment (its REDIS_URL pointed at that server): ready, and the
    password in no log line. The same service with another password is not ready."""
    monkeypatch.delenv("JWT_SECRET_KEY", raising=False)
    (container,) = k8s("StatefulSet", "swe-redis")["spec"]["template"]["spec"]["containers"]
    args = expand_args(container["args"], container_env(container))
    password = K8S_SECRETS["swe-api-secrets"]["redis-password"]
    redis = RedisProcess(free_port(), str(tmp_path), extra_args=tuple(args[1:]))
    await redis.start()
    try:
        for secret, expected in ((password, 200), ("0" * 64, 503)):
            secrets = {"swe-api-secrets": {**K8S_SECRETS["swe-api-secrets"], "redis-password": secret}}
            env = container_env(api_container(), secrets)
            url = urlsplit(env["REDIS_URL"])
            port = free_port()
            env.update(HOST="127.0.0.1", PORT=str(port), SHUTDOWN_TIMEOUT_SECONDS="1", **isolation())
            env["REDIS_URL"] = url._replace(netloc=f":{url.password}@127.0.0.1:{redis.port}").geturl()
            run_dir = tmp_path / f"run-{expected}"
            run_dir.mkdir()
            # the image's CMD and ENV (what it can import is test_image_cmd_serves_health_and_ready's)
            server = await start_server_process(
                command(dockerfile_cmd()), env={**dockerfile_env(), **env}, cwd=image_workdir(run_dir)
            )
            try:
                async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:

                    async def settled(http: httpx.AsyncClient = http, expected: int = expected) -> bool:
                        return (await http.get("/ready")).status_code == expected

                    await eventually(settled, what=f"/ready answering {expected}")
            finally:
                await server.stop()
            output = "".join(server.output)
            assert secret not in output and password not in output
            assert "redis://:***@127.0.0.1" in output
    finally:
        await redis.stop()
    assert password not in "".join(redis.output)


# --- NetworkPolicies -----------------------------------------------------------------------------

INGRESS_CONTROLLER = Peer(
    labels={"app.kubernetes.io/name": "ingress-nginx"}, namespace={"kubernetes.io/metadata.name": "ingress-nginx"}
)
IN_CLUSTER_CLIENT = Peer(labels={"swe-api/client": "true"})
OTHER_POD = Peer(labels={"app.kubernetes.io/name": "something-else"})
KUBE_DNS = Peer(labels={"k8s-app": "kube-dns"}, namespace={"kubernetes.io/metadata.name": "kube-system"})
DATABASE_POD = Peer(labels={"cnpg.io/cluster": "events"}, namespace={"kubernetes.io/metadata.name": "databases"})
OUTSIDE = Peer(ip="198.51.100.10")


def test_the_network_policy_model_can_tell():
    """The evaluator below is what the policies are checked with: it isolates only selected pods,
    and a podSelector alone means this namespace."""
    assert connects(OTHER_POD, Peer(labels={"unselected": "pod"}), 1234)  # no policy selects either
    assert peer_matches({"podSelector": {"matchLabels": {"a": "b"}}}, Peer(labels={"a": "b"}))
    elsewhere = Peer(labels={"a": "b"}, namespace={"kubernetes.io/metadata.name": "other"})
    assert not peer_matches({"podSelector": {"matchLabels": {"a": "b"}}}, elsewhere)
    assert peer_matches({"namespaceSelector": {}, "podSelector": {"matchLabels": {"a": "b"}}}, elsewhere)
    assert peer_matches({"ipBlock": {"cidr": "0.0.0.0/0"}}, OUTSIDE)
    assert not peer_matches({"ipBlock": {"cidr": "0.0.0.0/0", "except": ["198.51.100.0/24"]}}, OUTSIDE)
    assert not peer_matches({"ipBlock": {"cidr": "::/0"}}, OUTSIDE)
    assert not peer_matches({"ipBlock": {"cidr": "0.0.0.0/0"}}, OTHER_POD)
    assert port_matches([{"port": 53, "protocol": "UDP"}], 53, "UDP") and not port_matches([{"port": 53}], 53, "UDP")


def test_k8s_every_pod_is_fenced_in_both_directions():
    for kind, name in (("Deployment", "swe-api"), ("StatefulSet", "swe-redis")):
        labels = pod_of(kind, name).labels
        for direction in ("Ingress", "Egress"):
            assert any(
                direction in policy_types(policy) and label_selector_matches(policy["spec"]["podSelector"], labels)
                for policy in network_policies()
            ), f"no NetworkPolicy fences {kind} {name} for {direction}"


def test_k8s_only_the_api_pods_reach_redis_and_redis_reaches_nothing():
    api, redis = pod_of("Deployment", "swe-api"), pod_of("StatefulSet", "swe-redis")
    (port,) = k8s("Service", "swe-redis")["spec"]["ports"]
    assert connects(api, redis, port["port"])
    for other in (OTHER_POD, IN_CLUSTER_CLIENT, INGRESS_CONTROLLER, OUTSIDE):
        assert not connects(other, redis, 6379), other
    api_elsewhere = Peer(labels=api.labels, namespace={"kubernetes.io/metadata.name": "other"})
    assert not connects(api_elsewhere, redis, 6379)  # the same labels in another namespace: no
    assert not connects(api, redis, 16379)  # only its port
    for destination, to_port, protocol in ((KUBE_DNS, 53, "UDP"), (OUTSIDE, 443, "TCP"), (api, PORT, "TCP")):
        assert not connects(redis, destination, to_port, protocol)


def test_k8s_api_pods_accept_their_http_port_from_the_ingress_controller_only():
    api = pod_of("Deployment", "swe-api")
    assert connects(INGRESS_CONTROLLER, api, PORT)
    assert connects(IN_CLUSTER_CLIENT, api, PORT)  # labelled callers of this namespace
    for other in (OTHER_POD, OUTSIDE, pod_of("StatefulSet", "swe-redis")):
        assert not connects(other, api, PORT), other
    assert not connects(INGRESS_CONTROLLER, api, 9090)  # nothing but the HTTP port
    assert [named_port(api_container(), p["containerPort"]) for p in api_container()["ports"]] == [PORT]
    # the controller's namespace is the one the manifest's header says to install it in
    assert "namespace\n# `ingress-nginx`" in K8S_FILE.read_text().split("\n---", 1)[0]


def test_k8s_api_pods_reach_redis_dns_and_the_database_only():
    api, redis = pod_of("Deployment", "swe-api"), pod_of("StatefulSet", "swe-redis")
    assert connects(api, redis, 6379)
    assert connects(api, KUBE_DNS, 53, "UDP") and connects(api, KUBE_DNS, 53, "TCP")
    database = urlsplit(K8S_SECRETS["swe-api-secrets"]["database-url"])
    assert database.port == 5432
    assert connects(api, OUTSIDE, 5432) and connects(api, DATABASE_POD, 5432)  # a managed one or in-cluster
    assert connects(api, Peer(ip="2001:db8::5"), 5432)
    for destination, to_port, protocol in (
        (OUTSIDE, 443, "TCP"),  # no JWKS URL configured: no HTTPS out
        (OUTSIDE, 80, "TCP"),
        (OUTSIDE, 6379, "TCP"),
        (OTHER_POD, PORT, "TCP"),
        (KUBE_DNS, 5353, "UDP"),
        (OUTSIDE, 53, "UDP"),  # DNS is the cluster's only
    ):
        assert not connects(api, destination, to_port, protocol), (destination, to_port)


def test_k8s_jwks_over_https_is_allowed_exactly_when_a_jwks_url_is_configured():
    api = pod_of("Deployment", "swe-api")
    assert connects(api, OUTSIDE, 443) == bool(container_env(api_container()).get("JWT_JWKS_URL"))
    # the rule to uncomment is there, beside the others
    policy_text = K8S_FILE.read_text().rsplit("kind: NetworkPolicy", 1)[1]
    assert "# With JWT_JWKS_URL set" in policy_text and "#       port: 443" in policy_text


def test_k8s_service_has_client_ip_affinity_and_selects_only_the_api():
    service = k8s("Service", "swe-api")
    assert service["spec"]["sessionAffinity"] == "ClientIP"
    assert selects(service["spec"]["selector"], api_deployment()["spec"]["template"]["metadata"]["labels"])
    redis_pod = k8s("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert not selects(service["spec"]["selector"], redis_pod)
    (port,) = service["spec"]["ports"]
    assert port["port"] == PORT and named_port(api_container(), port["targetPort"]) == PORT
    budget = k8s("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"] == api_deployment()["spec"]["selector"]["matchLabels"]


def test_k8s_ingress_has_cookie_affinity_and_websocket_timeouts():
    ingress = k8s("Ingress")
    annotations = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert annotations[prefix + "affinity"] == "cookie"
    assert annotations[prefix + "session-cookie-name"]
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert seconds(annotations[prefix + timeout]) > HEARTBEAT_SECONDS
    assert size_bytes(annotations[prefix + "proxy-body-size"]) > MAX_PAYLOAD_BYTES
    service = k8s("Service", "swe-api")
    backends = [path["backend"]["service"] for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
    assert backends == [{"name": "swe-api", "port": {"number": service["spec"]["ports"][0]["port"]}}]


# --- the service started as the image starts it ------------------------------------------------


def runtime_distributions() -> set[str]:
    """What ``pip install -r requirements.txt`` installs: its requirements and theirs (with extras),
    for this platform and Python, as the image's pip resolves them."""
    lines = (line.split("#")[0].strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines())
    todo = [Requirement(line) for line in lines if line and not line.startswith("-")]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        requirement = todo.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        for text in importlib.metadata.requires(requirement.name) or []:
            dependency = Requirement(text)
            extras = requirement.extras or {""}
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in extras):
                todo.append(dependency)
    return {name for name, _ in seen}


IMAGE_SITE_MARK = "image site: only what requirements.txt installs can be imported"
#: Installed with Python itself in the python:3.11-slim image.
IMAGE_PYTHON_DISTRIBUTIONS = {"pip", "setuptools", "wheel"}


def image_site(tmp_path: Path) -> Path:
    """A ``sitecustomize`` that makes every module of a distribution the image does not install
    (pytest, httpx, aiohttp, ...) fail to import, as it would in the image."""
    allowed = runtime_distributions() | IMAGE_PYTHON_DISTRIBUTIONS
    blocked = sorted(
        module
        for module, distributions in importlib.metadata.packages_distributions().items()
        if not any(canonicalize_name(d) in allowed for d in distributions)
    )
    site = tmp_path / "image-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        f"BLOCKED = frozenset({blocked!r})\n"
        "class NotInImage:\n"
        "    @staticmethod\n"
        "    def find_spec(name, path=None, target=None):\n"
        "        if name.partition('.')[0] in BLOCKED:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r} (not in requirements.txt)', name=name)\n"
        "sys.meta_path.insert(0, NotInImage)\n"
        f"print({IMAGE_SITE_MARK!r}, file=sys.stderr)\n"
    )
    return site


def image_workdir(tmp_path: Path) -> Path:
    """A stand-in for the image's /app: only apps/ (no .env of the developer's, no logs/)."""
    workdir = tmp_path / "app"
    workdir.mkdir()
    (workdir / "apps").symlink_to(REPO_ROOT / "apps", target_is_directory=True)
    return workdir


def image_env(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    """The image's ENV, then ``env``, with only requirements.txt's distributions importable."""
    return {**dockerfile_env(), **env, "PYTHONPATH": str(image_site(tmp_path))}


def command(args: list[str]) -> list[str]:
    """An image command run here: `python` is this interpreter."""
    return [sys.executable, *args[1:]] if args[0] == "python" else args


async def exit_code(args: list[str], env: dict[str, str]) -> int:
    """Run a health check command (exec form) as Docker would inside the container, bounded."""
    process = await asyncio.create_subprocess_exec(
        *command(args), env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(process.wait(), 20)


def environment_of(source: str, tmp_path: Path) -> tuple[dict[str, str], str]:
    """The service's environment as the file gives it, and the JWT secret it ends up with. Compose:
    the api's environment, and the secret files its one-shot service writes (SECRETS_DIR stands for
    the volume's /run/secrets). Kubernetes: the ConfigMap and the container's env, from the Secret."""
    if source == "compose":
        secrets = tmp_path / "secrets"
        run_init_secrets(secrets)
        env = {**compose_environment(compose()["services"]["api"]), "SECRETS_DIR": str(secrets)}
        return env, read_secret(secrets, "jwt_secret_key")
    env = container_env(api_container())
    return env, env["JWT_SECRET_KEY"]


def test_image_site_blocks_what_the_image_does_not_install(tmp_path: Path):
    assert {"fastapi", "uvicorn", "python-socketio", "redis", "websockets", "uvloop"} <= runtime_distributions()
    # test and lint tools only (httpx is not among them: the service fetches JWT_JWKS_URL with it)
    assert not {"pytest", "hypothesis", "aiohttp", "ruff", "mypy"} & runtime_distributions()
    env = {"PATH": "", "PYTHONPATH": str(image_site(tmp_path))}
    check = [sys.executable, "-c", "import fastapi, socketio, redis, yaml, uvloop"]
    assert subprocess.run(check, env=env, timeout=60, check=False).returncode == 0
    blocked = [sys.executable, "-c", "import pytest"]
    assert subprocess.run(blocked, env=env, timeout=60, check=False, capture_output=True).returncode != 0


@pytest.mark.parametrize("source", ["compose", "kubernetes"])
async def test_image_cmd_serves_health_and_ready_with_the_files_settings(
    source: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("JWT_SECRET_KEY", raising=False)  # the server inherits the tests' environment
    port = free_port()
    # Redis and the database of the tests (the variables win over compose's secret files)
    overrides = {"HOST": "127.0.0.1", "PORT": str(port), "REDIS_URL": redis_url, **isolation()}
    # A closed long-polling client leaves a pending GET that graceful shutdown waits for, up to the
    # files' SHUTDOWN_TIMEOUT_SECONDS (10 s): not what this test is about.
    overrides["SHUTDOWN_TIMEOUT_SECONDS"] = "1"
    file_env, jwt_secret = environment_of(source, tmp_path)
    env = image_env(tmp_path, {**file_env, **overrides})
    workdir = image_workdir(tmp_path)
    server = await start_server_process(command(dockerfile_cmd()), env=env, cwd=workdir)
    try:
        assert IMAGE_SITE_MARK in "".join(server.output)
        assert f"Uvicorn running on http://127.0.0.1:{port}" in "".join(server.output)
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            health = await http.get("/health")
            assert health.status_code == 200
            assert health.json()["status"] == "ok" and health.json()["mode"] == "redis"
            ready = await http.get("/ready")
            assert ready.status_code == 200, ready.text
        for transports in (("websocket",), ("polling",)):
            client = WsClient(server.url)
            await client.connect(make_token(secret=jwt_secret), transports=transports)
            try:
                assert (await client.expect("connection_established"))["type"] == "connection_established"
            finally:
                await client.close()
        probe_env = {"PORT": str(port), "PATH": ""}
        assert await exit_code(dockerfile_healthcheck(), probe_env) == 0
        assert await exit_code(compose()["services"]["api"]["healthcheck"]["test"][1:], probe_env) == 0
    finally:
        await server.stop()
    assert not (workdir / "logs").exists()  # LOG_FILE="": nothing written in the image's directory
    assert "ENVIRONMENT=production" not in "".join(server.output)  # no refusal: it runs in production
    assert jwt_secret not in "".join(server.output)


async def test_image_without_redis_stays_live_but_not_ready(tmp_path: Path):
    """The card's `docker run ... -e REDIS_URL=redis://redis:6379 ...` where no Redis answers: the
    container starts and stays healthy (/health), but is not ready (/ready), so a load balancer
    sends it no clients and the compose health check reports it."""
    port = free_port()
    card = {
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        "CORS_ORIGINS": "https://app.example.com",
        "JWT_SECRET_KEY": TEST_SECRET,
    }
    env = image_env(tmp_path, {**card, "HOST": "127.0.0.1", "PORT": str(port)})
    server = await start_server_process(command(dockerfile_cmd()), env=env, cwd=image_workdir(tmp_path))
    try:
        assert IMAGE_SITE_MARK in "".join(server.output)
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            health = await http.get("/health")
            assert health.status_code == 200 and health.json()["redis"] == "unreachable"
            assert (await http.get("/ready")).status_code == 503
        probe_env = {"PORT": str(port), "PATH": ""}
        assert await exit_code(dockerfile_healthcheck(), probe_env) == 0
        assert await exit_code(compose()["services"]["api"]["healthcheck"]["test"][1:], probe_env) != 0
    finally:
        await server.stop()
