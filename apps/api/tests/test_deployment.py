"""The deployment files (Dockerfile, .dockerignore, docker-compose.yml, deploy/nginx.conf,
websocket-deployment.yaml) checked against the code they deploy.

No Docker engine or Kubernetes cluster runs where these tests run, so they check what can be
checked without one: every setting the files give is a real setting that validates, ports, probe
paths, affinity and timeouts agree with the service's, and the service started as the image's CMD
with the files' environment serves /health and /ready, and passes the files' health checks."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import re
import shlex
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pydantic import ValidationError

from apps.api.config import Settings
from apps.api.tests.redis_support import isolation
from apps.api.tests.support import REPO_ROOT, TEST_SECRET, WsClient, free_port, make_token, start_server_process

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
K8S_FILE = REPO_ROOT / "websocket-deployment.yaml"
NGINX_CONF = REPO_ROOT / "deploy" / "nginx.conf"

IMAGE = "swe-api"
PORT = 8000
#: Environment variable names the service reads: Settings' fields, upper-cased.
SETTINGS_ENV = {name.upper() for name in Settings.model_fields}
#: Variables the files may set that Settings does not read, and who reads them.
OTHER_ENV = {"FORWARDED_ALLOW_IPS": "uvicorn"}
#: The Engine.IO heartbeat: a proxy must not cut a connection idle for less than this.
HEARTBEAT_SECONDS = Settings.model_fields["ping_interval_seconds"].default + (
    Settings.model_fields["ping_timeout_seconds"].default
)
MAX_PAYLOAD_BYTES = Settings.model_fields["max_payload_bytes"].default
REDIS_TIMEOUT_SECONDS = Settings.model_fields["redis_timeout_seconds"].default
SHUTDOWN_TIMEOUT_DEFAULT = Settings.model_fields["shutdown_timeout_seconds"].default
#: A secret as websocket-deployment.yaml says to make one: openssl rand -hex 32.
PRODUCTION_SECRET = "0123456789abcdef" * 4


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
    """Settings exactly as the service reads these environment variables (and nothing else)."""
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


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
    assert "command" not in api and "entrypoint" not in api  # it runs the image's CMD


def test_plain_compose_up_starts_redis_postgres_and_api_only():
    spec = compose()
    default = {name for name, svc in spec["services"].items() if not svc.get("profiles")}
    assert default == {"redis", "postgres", "api"}
    for name in default:
        assert set(spec["services"][name].get("depends_on", {})) <= default
    published = [p.split(":")[0] for svc in spec["services"].values() for p in svc.get("ports", [])]
    assert len(published) == len(set(published)), "two services publish the same host port"


@pytest.mark.parametrize("name", sorted(app_services(compose())))
def test_compose_settings_are_real_settings_and_reach_the_redis_service(name: str, monkeypatch: pytest.MonkeyPatch):
    spec = compose()
    service = spec["services"][name]
    env = compose_environment(service)
    for variable in env:
        assert variable in SETTINGS_ENV, f"{name} sets {variable}, which the service does not read"
    url = urlsplit(env["REDIS_URL"])
    assert url.scheme == "redis" and url.hostname in spec["services"] and url.port == 6379
    assert spec["services"][url.hostname]["image"].startswith("redis:")
    assert service["depends_on"][url.hostname]["condition"] == "service_healthy"
    # every instance shares one PostgreSQL, which keeps its data in a volume
    database = urlsplit(env["DATABASE_URL"])
    assert database.scheme == "postgresql+asyncpg" and database.hostname in spec["services"]
    postgres = spec["services"][database.hostname]
    assert postgres["image"].startswith("postgres:") and service["depends_on"][database.hostname]["condition"] == (
        "service_healthy"
    )
    assert postgres["volumes"][0].split(":")[0] in spec["volumes"] and "ports" not in postgres
    pg_env = {k: interpolate(str(v), {}) for k, v in postgres["environment"].items()}
    assert (database.username, database.password, database.path) == (
        pg_env["POSTGRES_USER"],
        pg_env["POSTGRES_PASSWORD"],
        "/" + pg_env["POSTGRES_DB"],
    )
    assert "build" in service or any("build" in spec["services"][dep] for dep in service["depends_on"])

    # The values as `docker-compose up` gives them, with no setup: they validate and run in development.
    settings = settings_from_env(monkeypatch, env)
    assert settings.environment == "development" and settings.log_file is None and settings.workers == 1
    assert seconds(service["stop_grace_period"]) > settings.shutdown_timeout_seconds

    healthcheck = service["healthcheck"]
    assert healthcheck["test"][:2] == ["CMD", "python"] and "/ready'" in healthcheck["test"][-1]
    assert seconds(healthcheck["timeout"]) > REDIS_TIMEOUT_SECONDS  # /ready's Redis ping is bounded by it


def test_compose_default_secret_is_refused_in_production(monkeypatch: pytest.MonkeyPatch):
    """The file says: set JWT_SECRET_KEY and ENVIRONMENT=production for a real deployment. Setting
    only ENVIRONMENT must not start with the development secret written in the file."""
    env = compose_environment(compose()["services"]["api"])
    with pytest.raises(ValidationError, match="JWT_SECRET_KEY"):
        settings_from_env(monkeypatch, {**env, "ENVIRONMENT": "production"})
    env = {name: interpolate(value, {"ENVIRONMENT": "production", "JWT_SECRET_KEY": PRODUCTION_SECRET})
           for name, value in compose()["services"]["api"]["environment"].items()}  # fmt: skip
    assert settings_from_env(monkeypatch, env).environment == "production"


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


def test_k8s_settings_are_real_settings_and_valid_in_production(monkeypatch: pytest.MonkeyPatch):
    data = config_map()
    names = set(data) | {e["name"] for e in api_container()["env"]}
    for name in names:
        assert name in SETTINGS_ENV or name in OTHER_ENV, f"{name} is read by nothing"
    settings = settings_from_env(monkeypatch, {**data, "JWT_SECRET_KEY": PRODUCTION_SECRET})
    assert settings.environment == "production"
    assert settings.log_file is None
    assert "*" not in settings.cors_origins
    # Per-pod affinity cannot reach separate worker processes of one pod: one worker, more replicas.
    assert settings.workers == 1


def test_forwarded_allow_ips_is_read_by_uvicorn(monkeypatch: pytest.MonkeyPatch):
    assert OTHER_ENV == {"FORWARDED_ALLOW_IPS": "uvicorn"}
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
    url = urlsplit(config_map()["REDIS_URL"])
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


def environment_of(source: str) -> dict[str, str]:
    if source == "compose":
        return compose_environment(compose()["services"]["api"])
    return {**config_map(), "JWT_SECRET_KEY": PRODUCTION_SECRET}


def test_image_site_blocks_what_the_image_does_not_install(tmp_path: Path):
    assert {"fastapi", "uvicorn", "python-socketio", "redis", "websockets", "uvloop"} <= runtime_distributions()
    assert not {"pytest", "httpx", "ruff", "mypy"} & runtime_distributions()
    env = {"PATH": "", "PYTHONPATH": str(image_site(tmp_path))}
    check = [sys.executable, "-c", "import fastapi, socketio, redis, yaml, uvloop"]
    assert subprocess.run(check, env=env, timeout=60, check=False).returncode == 0
    blocked = [sys.executable, "-c", "import pytest"]
    assert subprocess.run(blocked, env=env, timeout=60, check=False, capture_output=True).returncode != 0


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # compose's development secret
@pytest.mark.parametrize("source", ["compose", "kubernetes"])
async def test_image_cmd_serves_health_and_ready_with_the_files_settings(source: str, redis_url: str, tmp_path: Path):
    port = free_port()
    overrides = {"HOST": "127.0.0.1", "PORT": str(port), "REDIS_URL": redis_url, **isolation()}
    # A closed long-polling client leaves a pending GET that graceful shutdown waits for, up to the
    # files' SHUTDOWN_TIMEOUT_SECONDS (10 s): not what this test is about.
    overrides["SHUTDOWN_TIMEOUT_SECONDS"] = "1"
    env = image_env(tmp_path, {**environment_of(source), **overrides})
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
            await client.connect(make_token(secret=env["JWT_SECRET_KEY"]), transports=transports)
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
