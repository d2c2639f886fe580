"""docker-compose.yml and deploy/ checked against the real CLIs, without a Docker engine.

Every service's command line goes through the parser and configuration loader of the program it runs
(``mvic.node.cli`` / ``mvic.fusion_server.cli``); then ports, volumes, Prometheus targets and the Dockerfiles are
checked against each other and against the repository. Which weights each program would load is decided by its
own code (``mvic.node.encoder.load_encoder``; for the server, ``mvic.shared.codec.registry.weights_source``, which
``mvic.fusion_server.app`` loads) with the registry's ``default_weights`` stubbed, so the tests do not need the
shipped weights files.
"""

from __future__ import annotations

import atexit
import contextlib
import fnmatch
import functools
import importlib.util
import io
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from mvic.node import cli as node_cli
from mvic.node.config import NodeConfig

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
SCALE_OUT = DEPLOY / "compose.scale-out.yml"
CAMERAS = tuple(f"C{k}" for k in range(1, 8))
START_AT = "1700000000000000000"  # what an operator exports as MVIC_START_AT_NS


# ------------------------------------------------------------------------------------------ compose reading
_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_]\w*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_]\w*))")


class MissingVariable(KeyError):
    pass


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return type(value)(interpolate(v, env) for v in value)  # keeps an override file's !override tag
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(1):
            return "$"
        name = m.group(2) or m.group(5)
        op, arg = m.group(3), m.group(4)
        unset = name not in env or (op is not None and op.startswith(":") and env[name] == "")
        if op in ("-", ":-"):
            return arg if unset else env[name]
        if op in ("?", ":?"):
            if unset:
                raise MissingVariable(f"{name}: {arg}")
            return env[name]
        return env.get(name, "")

    return _VAR.sub(sub, value)


def compose_variables(path: Path = COMPOSE) -> set[str]:
    return {m.group(2) or m.group(5) for m in _VAR.finditer(path.read_text()) if not m.group(1)}


def load_compose(env: dict[str, str] | None = None) -> dict:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), {"MVIC_START_AT_NS": START_AT} if env is None else env)


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        if not current and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if raw.lstrip().startswith("#"):
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            lines.append((word.upper(), rest.strip()))
            current = ""
    return lines


def exec_form(text: str) -> list[str]:
    return yaml.safe_load(text) if text.startswith("[") else shlex.split(text)


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith((".", "/", "~"))


def mounts(service: dict) -> list[Mount]:
    out = []
    for spec in service.get("volumes", []):
        source, target, *mode = spec.split(":")
        out.append(Mount(source, target, "ro" in mode))
    return out


def mount_of(service: dict, container_path: str) -> Mount | None:
    """The mount a container path lies in (the deepest one)."""
    found = [m for m in mounts(service) if container_path == m.target or container_path.startswith(m.target + "/")]
    return max(found, key=lambda m: len(m.target), default=None)


def argv(service: dict, image_entrypoint: list[str]) -> list[str]:
    entry = service.get("entrypoint", image_entrypoint)
    return list(entry) + list(service.get("command", []))


def image_entrypoint(name: str) -> list[str]:
    return exec_form(dict(dockerfile(DEPLOY / f"{name}.Dockerfile"))["ENTRYPOINT"])


def program(service: dict) -> str | None:
    """'node' or 'server' for services built from deploy/<program>.Dockerfile that run the image's program, else
    None (third-party images; the certs service runs mvic-certs from the node image)."""
    build = service.get("build")
    match = re.fullmatch(r"deploy/(\w+)\.Dockerfile", build["dockerfile"]) if build else None
    if not match or service.get("entrypoint", [f"mvic-{match.group(1)}"])[0] != f"mvic-{match.group(1)}":
        return None
    return match.group(1)


@functools.cache
def _certs_made(command: tuple[str, ...]) -> Path:
    """A folder holding what the certs service's command writes, made here by mvic-certs itself (--out under it,
    no --owner), so that the server's and nodes' certificate paths can be checked as real files."""
    from mvic.tools import certs

    root = Path(tempfile.mkdtemp(prefix="mvic-compose-tls-"))
    atexit.register(shutil.rmtree, root, True)
    args = [a.replace("--out=/", f"--out={root}/", 1) for a in command if not a.startswith("--owner")]
    with contextlib.redirect_stdout(io.StringIO()):
        assert certs.main(args) == 0
    return root


def on_host(compose: dict, name: str, args: list[str]) -> list[str]:
    """``args`` of service ``name`` with each path inside a volume the certs service fills replaced by the file
    mvic-certs made here for it (see _certs_made)."""
    certs_service = compose["services"]["certs"]
    assert certs_service["entrypoint"] == ["mvic-certs"]
    root = _certs_made(tuple(certs_service["command"]))
    filled = {m.source: m.target for m in mounts(certs_service)}
    out = []
    for arg in args:
        for m in mounts(compose["services"][name]):
            if m.source in filled and m.target + "/" in arg:
                arg = arg.replace(m.target + "/", f"{root}{filled[m.source]}/")
        out.append(arg)
    return out


def node_configs(compose: dict) -> dict[str, NodeConfig]:
    """Service name -> the NodeConfig its command line produces (parser + config loader of mvic-node)."""
    out = {}
    for name, service in compose["services"].items():
        if program(service) != "node":
            continue
        args = on_host(compose, name, argv(service, image_entrypoint("node")))
        assert args[0] == "mvic-node"
        out[name] = node_cli.config_from_args(node_cli.build_parser().parse_args(args[1:]))
    return out


def server_command(compose: dict) -> list[str]:
    service = compose["services"]["server"]
    assert program(service) == "server"
    args = argv(service, image_entrypoint("server"))
    assert args[0] == "mvic-server"
    return on_host(compose, "server", args[1:])


def server_config(compose: dict):
    """The ServerConfig of the server's command line, its --config file read from the repository, and the args."""
    from mvic.fusion_server import cli as server_cli
    from mvic.fusion_server.config import load_config

    args = server_cli.build_parser().parse_args(server_command(compose))
    config_file = None
    if args.config:
        mount = mount_of(compose["services"]["server"], args.config)
        assert mount is not None and mount.is_bind, f"--config {args.config} is not in a bind mount"
        config_file = ROOT / mount.source / Path(args.config).relative_to(mount.target)
    return load_config(config_file, server_cli.overrides(args)), args


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.fixture(scope="module")
def nodes(compose) -> dict[str, NodeConfig]:
    return node_configs(compose)


@pytest.fixture(scope="module")
def server_args(compose) -> list[str]:
    return server_command(compose)


@pytest.fixture(scope="module")
def server(compose):
    return server_config(compose)


# ------------------------------------------------------------------------------------------- command lines
def test_every_service_is_known_and_the_seven_cameras_run(compose, nodes):
    assert set(compose["services"]) == {"certs", "server", "prometheus", *(f"node-{c.lower()}" for c in CAMERAS)}
    assert sorted(c.camera for c in nodes.values()) == list(CAMERAS)
    for name, config in nodes.items():
        assert name == f"node-{config.camera.lower()}", "service name and --camera disagree"


def test_server_command_line_passes_validate_config(compose, server_args, capsys):
    from mvic.fusion_server import cli as server_cli

    service = compose["services"]["server"]
    args = server_cli.build_parser().parse_args(server_args)
    mount = mount_of(service, args.config)
    host_config = str(ROOT / mount.source / Path(args.config).relative_to(mount.target))
    assert server_cli.main([a.replace(args.config, host_config) for a in server_args] + ["--validate-config"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("mvic-server: configuration OK")
    assert yaml.safe_load(captured.out)["cameras"] == list(CAMERAS)  # the effective config, as YAML


def test_node_command_lines_pass_validate_config(compose, monkeypatch, capsys):
    """The same dialect as the server's: the effective config as YAML on stdout, exit 0 (the video files and the
    installed weights are container paths here, so the preflight is stubbed)."""
    monkeypatch.setattr(node_cli, "preflight", lambda config: None)
    for name, service in compose["services"].items():
        if program(service) == "node":
            args = on_host(compose, name, argv(service, image_entrypoint("node")))
            assert node_cli.main(args[1:] + ["--validate-config"]) == 0, name
            captured = capsys.readouterr()
            assert captured.err.startswith("mvic-node: configuration OK")
            assert yaml.safe_load(captured.out)["camera"] == name.removeprefix("node-").upper()


def test_server_decodes_on_the_reserved_gpu_and_allows_exactly_the_seven_cameras(compose, server):
    config, args = server
    assert config.device == "cuda:0" and args.gpu == 0
    devices = compose["services"]["server"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1 and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert len(devices[0].get("device_ids", ["0"])) == 1 or devices[0].get("count") == 1
    assert sorted(config.cameras) == list(CAMERAS)
    assert config.http and config.metrics_port


def test_nodes_share_one_schedule(nodes):
    (start_at,) = {c.source.start_at_ns for c in nodes.values()}
    assert start_at == int(START_AT), "the nodes must all get --start-at from MVIC_START_AT_NS"
    assert len({c.source.fps for c in nodes.values()}) == 1 and next(iter(nodes.values())).source.fps > 0
    assert {c.encode.policy for c in nodes.values()} == {"every"}, "replayed files must keep every frame"


OWN = "/weights/mine.safetensors"
WEIGHTS_CASES = {  # environment -> what every program loads, and the model it codes with
    "installed": ({}, "installed:ldmic-fast-lite", "ldmic-fast-lite"),
    "installed-other-model": ({"MVIC_MODEL": "ldmic-lite"}, "installed:ldmic-lite", "ldmic-lite"),
    "own-file": ({"MVIC_WEIGHTS_DIR": "/srv/weights", "MVIC_WEIGHTS": OWN}, Path(OWN), "ldmic-fast-lite"),
    "own-file-other-model": ({"MVIC_WEIGHTS": OWN, "MVIC_MODEL": "ldmic-lite"}, Path(OWN), "ldmic-lite"),
}


@pytest.mark.parametrize("env, loaded, model", WEIGHTS_CASES.values(), ids=WEIGHTS_CASES)
def test_nodes_and_server_load_the_same_weights_and_model(monkeypatch, env, loaded, model):
    """Out of the box both sides load the installed weights of MVIC_MODEL (one package in both images, so one
    file); MVIC_WEIGHTS points all of them at one file in the read-only MVIC_WEIGHTS_DIR mount instead."""
    from mvic.node import encoder
    from mvic.shared.codec import registry

    def installed(name):  # stands for registry.default_weights(name): the weights installed in the image
        return f"installed:{name}"

    monkeypatch.setattr(registry, "default_weights", installed)
    monkeypatch.setattr(encoder, "load_model", lambda source, model=None: source)
    compose = load_compose({"MVIC_START_AT_NS": START_AT, **env})
    config, _ = server_config(compose)
    programs = {"server": (registry.weights_source(config.weights, config.model), config.model)}
    nodes = node_configs(compose)
    programs.update({name: (encoder.load_encoder(c.encode), c.encode.model) for name, c in nodes.items()})
    assert len(programs) == 1 + len(CAMERAS)
    for name, got in programs.items():
        assert got == (loaded, model), f"{name} would load {got[0]} with model {got[1]}"
    if isinstance(loaded, Path):  # the same host file behind that path everywhere
        for name in programs:
            mount = mount_of(compose["services"][name], str(loaded))
            assert mount is not None and mount.is_bind and mount.read_only, f"{name}: {loaded} is not mounted"
            assert mount.source == env.get("MVIC_WEIGHTS_DIR", "./weights"), name


def test_the_schedule_variable_is_required():
    with pytest.raises(MissingVariable, match="MVIC_START_AT_NS"):
        load_compose(env={})


def test_per_camera_video_names_come_from_one_variable_pattern(nodes):
    env = {"MVIC_START_AT_NS": START_AT, **{f"WILDTRACK_{c}": f"view-{c}.avi" for c in CAMERAS}}
    renamed = load_compose(env)["services"]
    for name, config in nodes.items():
        args = node_cli.build_parser().parse_args(argv(renamed[name], [])[1:])
        assert args.source == f"/wildtrack/view-{config.camera}.avi"
        assert Path(config.source.uri).name == f"cam{config.camera[1:]}.mp4"  # the documented default


# ------------------------------------------------------------------------------------------------- ports
def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def _published(service: dict) -> list[tuple[int, int]]:
    out = []
    for spec in service.get("ports", []):
        host, _, container = str(spec).rpartition(":")
        out.append((int(host.rpartition(":")[2]), int(container.split("/")[0])))
    return out


def dial_host(target: str) -> str:
    """The host of a node's --server (``dns:///server:50051`` -> ``server``)."""
    return target.removeprefix("dns:///").rpartition(":")[0]


def test_nodes_dial_the_server_service_on_its_grpc_port(compose, nodes, server):
    """Through gRPC's DNS resolver, which returns every replica of the service (compose.scale-out.yml)."""
    config, _ = server
    for node in nodes.values():
        assert node.server.startswith("dns:///")
        assert dial_host(node.server) == "server" and "server" in compose["services"]
        assert _port(node.server) == _port(config.listen)


def test_published_ports_are_unique_and_lead_to_something_listening(compose, server):
    config, _ = server
    listening = {"server": {_port(config.listen), _port(config.http), config.metrics_port}, "prometheus": {9090}}
    seen = {}
    for name, service in compose["services"].items():
        for host, container in _published(service):
            assert host not in seen, f"host port {host} published by {seen.get(host)} and {name}"
            seen[host] = name
            assert container in listening.get(name, set()), f"{name} publishes {container}, nothing listens there"
    assert {c for _, c in _published(compose["services"]["server"])} >= {_port(config.listen), _port(config.http)}


def test_prometheus_scrapes_exactly_the_metrics_ports_the_services_open(compose, nodes, server):
    from mvic.fusion_server.config import is_loopback

    config, _ = server
    expected = {f"server:{config.metrics_port}"} | {f"{name}:{c.metrics.port}" for name, c in nodes.items()}
    assert all(c.metrics.port for c in nodes.values())
    for name, host in [("server", config.metrics_host), *((n, c.metrics.host) for n, c in nodes.items())]:
        assert not is_loopback(host), f"{name} binds its metrics to {host}: Prometheus cannot reach them"
    prometheus = compose["services"]["prometheus"]
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    mount = mount_of(prometheus, config_flag.partition("=")[2])
    assert mount and mount.is_bind and (ROOT / mount.source) == DEPLOY / "prometheus.yml"
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = [t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert len(targets) == len(set(targets)) and set(targets) == expected


def test_health_checks_probe_the_ports_the_programs_open(compose, nodes, server):
    config, _ = server
    health = dict(dockerfile(DEPLOY / "server.Dockerfile"))["HEALTHCHECK"]
    assert "mvic-grpc-health" in health and f"localhost:{_port(config.listen)}" in health
    for name, node in nodes.items():
        test = " ".join(compose["services"][name]["healthcheck"]["test"])
        assert f"localhost:{node.metrics.port}/metrics" in test
    exposed = {int(p) for p in dict(dockerfile(DEPLOY / "server.Dockerfile"))["EXPOSE"].split()}
    assert exposed == {_port(config.listen), _port(config.http), config.metrics_port}


# ----------------------------------------------------------------------------------------------- volumes
def test_every_mount_is_a_declared_volume_or_a_documented_host_path(compose):
    declared = set(compose.get("volumes") or {})
    used = set()
    readme = (DEPLOY / "README.md").read_text()
    for name, service in compose["services"].items():
        for m in mounts(service):
            if not m.is_bind:
                assert m.source in declared, f"{name}: volume {m.source} is not declared"
                used.add(m.source)
            elif (ROOT / m.source).exists():
                assert (ROOT / m.source).resolve().is_relative_to(ROOT) and m.read_only, f"{name}: {m.source}"
            else:  # a data folder the operator provides: its variable must be documented
                raw = yaml.safe_load(COMPOSE.read_text())["services"][name]["volumes"]
                var = re.search(r"\$\{(\w+)", next(v for v in raw if v.endswith(f":{m.target}:ro")))
                assert m.read_only and var and var.group(1) in readme, f"{name}: {m.source} is undocumented"
    assert used == declared, f"declared but unused volumes: {declared - used}"


def test_videos_lie_in_read_only_mounts(compose, nodes):
    for name, node in nodes.items():
        mount = mount_of(compose["services"][name], node.source.uri)
        assert mount is not None and mount.is_bind and mount.read_only, f"{name}: {node.source.uri} is not mounted"


def test_spools_and_output_live_in_named_volumes_one_per_node(compose, nodes, server):
    config, _ = server
    volumes = []
    for name, node in nodes.items():
        mount = mount_of(compose["services"][name], node.spool.dir)
        assert mount is not None and not mount.is_bind and not mount.read_only, f"{name}: spool not on a volume"
        volumes.append(mount.source)
    assert len(set(volumes)) == len(nodes), "two nodes share a spool volume"
    out = mount_of(compose["services"]["server"], config.out)
    assert out is not None and not out.is_bind and not out.read_only and out.source not in volumes


def test_every_variable_is_documented():
    readme = (DEPLOY / "README.md").read_text()
    missing = sorted(v for v in compose_variables() | compose_variables(SCALE_OUT)
                     if f"`{v}`" not in readme and not re.fullmatch(r"WILDTRACK_C\d", v))
    assert not missing and "WILDTRACK_C<k>" in readme, f"undocumented in deploy/README.md: {missing}"


# --------------------------------------------------------------------------------------------- images
@pytest.mark.parametrize("name", ["node", "server"])
def test_dockerfile_copies_existing_files_and_runs_the_installed_script(name):
    path = DEPLOY / f"{name}.Dockerfile"
    instructions = dockerfile(path)
    for word, rest in instructions:
        if word in ("COPY", "ADD") and "--from=" not in rest:
            *sources, _ = [a for a in rest.split() if not a.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), f"{path.name}: COPY {source} does not exist"
    scripts = yaml.safe_load(_toml_scripts())
    assert image_entrypoint(name) == [f"mvic-{name}"] and f"mvic-{name}" in scripts
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert [rest for word, rest in instructions if word == "FROM"][-1] == "${PYTHON_IMAGE}"
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in path.read_text()


def _toml_scripts() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return "\n".join(line.replace(" = ", ": ", 1) for line in section.strip().splitlines())


@pytest.mark.parametrize("name", ["node", "server"])
def test_torch_pins_match_the_setup_script(name):
    pins = dict(re.findall(r'"(torch|torchvision)==([\w.]+)"', (ROOT / "scripts" / "setup.sh").read_text()))
    args = dict(re.findall(r"ARG (TORCH_VERSION|TORCHVISION_VERSION)=(\S+)", (DEPLOY / f"{name}.Dockerfile").read_text()))
    assert args == {"TORCH_VERSION": pins["torch"], "TORCHVISION_VERSION": pins["torchvision"]}


@pytest.mark.parametrize("name", ["node", "server"])
def test_image_installs_the_shipped_weights(name):
    """`pip install .` of a tree holding shared/codec/weights/*.safetensors puts them in the image as package data;
    the build checks that every file records.json lists is installed with its sha256."""
    shipped = "shared/codec/weights/ldmic-fast-lite-v5.safetensors"
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert {"weights/*.safetensors", "weights/*.json"} <= set(package_data["mvic.shared.codec"])
    instructions = dockerfile(DEPLOY / f"{name}.Dockerfile")
    copied = [src.rstrip("/") for w, rest in instructions if w == "COPY" and "--from=" not in rest
              for src in rest.split()[:-1]]
    assert any(shipped.startswith(src + "/") for src in copied), f"{name}.Dockerfile does not copy {shipped}"
    runs = [rest for w, rest in instructions if w == "RUN"]
    assert any("pip install . " in run and "registered_weights()" in run and "sha256_of" in run for run in runs)
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    parts = shipped.split("/")
    for prefix in ("/".join(parts[:k]) for k in range(1, len(parts) + 1)):
        assert not any(fnmatch.fnmatch(prefix, p) for p in patterns), f".dockerignore excludes {prefix}"


def test_node_image_takes_torch_from_the_cpu_index():
    text = (DEPLOY / "node.Dockerfile").read_text()
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert '--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"' in text


def test_compose_builds_from_the_deploy_dockerfiles(compose):
    for name, service in compose["services"].items():
        if "build" in service:
            assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file(), name
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "data", "runs"} <= set(ignored)
    copied = {src for f in ("node", "server") for w, rest in dockerfile(DEPLOY / f"{f}.Dockerfile")
              if w == "COPY" and "--from=" not in rest for src in rest.split()[:-1]}
    assert not copied & set(ignored), "a COPY source is excluded from the build context"


# ----------------------------------------------------------------------------------------- health probe
def _probe():
    spec = importlib.util.spec_from_file_location("grpc_health_probe", DEPLOY / "grpc_health_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_health_probe_exits_0_only_when_the_fusion_service_is_serving(capsys):
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from mvic.shared.rpc import SERVICE_NAME

    probe = _probe()
    servicer = health.HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        address = f"127.0.0.1:{port}"
        servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
        assert probe.main([address]) == 1
        servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        assert probe.main([address]) == 0
        assert "SERVING" in capsys.readouterr().out
    finally:
        server.stop(None)
    assert probe.main([address, "--timeout", "0.5"]) == 1  # nobody listening


# ----------------------------------------------------------------------------------------------- security
def test_certs_service_gives_each_container_only_its_own_keys(compose, nodes, server):
    """The one-off certs service fills one volume per container; the CA key stays in a volume no other service
    mounts; every container that reads certificates waits for it and mounts its volume read-only; the server's
    live page gets the token and certificate mvic-certs wrote (real files: made here by the same command)."""
    from cryptography import x509

    from mvic.tools import certs

    service = compose["services"]["certs"]
    args = certs.build_parser().parse_args(service["command"])
    assert args.kind == "bundle" and args.token and sorted(args.camera) == list(CAMERAS) and "server" in args.dns
    filled = {m.source: m.target for m in mounts(service)}
    assert filled == {"tls-ca": "/tls/ca", "tls-server": "/tls/server",
                      **{f"tls-{c.lower()}": f"/tls/{c}" for c in CAMERAS}}
    for name, other in compose["services"].items():
        if name == "certs":
            continue
        own = [m for m in mounts(other) if m.source in filled]
        assert "tls-ca" not in {m.source for m in own}, f"{name} mounts the CA key"
        assert all(m.read_only for m in own), name
        if own:
            assert other["depends_on"]["certs"]["condition"] == "service_completed_successfully", name
    for name in nodes:
        assert [m.source for m in mounts(compose["services"][name]) if m.source in filled] == [f"tls-{name[5:]}"]
    config, _ = server
    assert Path(config.http_token_file).is_file() and config.http_cert and config.http_key
    cert = x509.load_pem_x509_certificate(Path(config.http_cert).read_bytes())
    assert "localhost" in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.DNSName)


def test_published_ports_bind_loopback_by_default():
    for name, service in load_compose()["services"].items():
        for spec in service.get("ports", []):
            assert str(spec).startswith("127.0.0.1:"), f"{name} publishes {spec} beyond this host"
    opened = load_compose({"MVIC_START_AT_NS": START_AT, "MVIC_PUBLISH_HOST": "0.0.0.0"})
    assert all(str(p).startswith("0.0.0.0:") for p in opened["services"]["server"]["ports"])


def test_nodes_and_server_speak_mutual_tls_with_the_certificates_of_their_camera(compose, nodes, server):
    """Each node presents the certificate whose URI SAN is its own camera id, in the server's trust domain, and
    trusts the CA that signed the server's certificate; the server requires them (no --insecure)."""
    from cryptography import x509

    from mvic.shared.identity import parse_camera_uri

    config, _ = server
    assert config.tls.enabled and not config.insecure
    for name, node in nodes.items():
        assert node.tls.enabled, name
        cert = x509.load_pem_x509_certificate(Path(node.tls.cert).read_bytes())
        (uri,) = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
        identity = parse_camera_uri(uri)
        assert (identity.camera_id, identity.group_id, identity.trust_domain) == \
            (node.camera, node.group, config.tls.trust_domain), name
        assert Path(node.tls.ca).read_bytes() == Path(config.tls.client_ca).read_bytes()
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(Path(node.tls.ca).read_bytes()))
    server_cert = x509.load_pem_x509_certificate(Path(config.tls.cert).read_bytes())
    names = server_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {dial_host(n.server) for n in nodes.values()} <= set(names.get_values_for_type(x509.DNSName))


def test_server_health_check_dials_the_mtls_port_with_the_probe_certificate(compose, server):
    config, _ = server
    test = compose["services"]["server"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "mvic-grpc-health", f"localhost:{_port(config.listen)}"]
    files = on_host(compose, "server", test[3:])
    for arg in files:
        assert Path(arg.partition("=")[2]).is_file(), arg


def test_health_probe_speaks_mutual_tls(tmp_path, capsys):
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from mvic.shared.rpc import SERVICE_NAME
    from mvic.tools import certs

    assert certs.main(["bundle", "--out", str(tmp_path), "--dns", "localhost"]) == 0
    srv = tmp_path / "server"
    servicer = health.HealthServicer()
    servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials([((srv / "server.key").read_bytes(), (srv / "server.crt").read_bytes())],
                                              root_certificates=(srv / "ca.crt").read_bytes(),
                                              require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        address, probe = f"localhost:{port}", _probe()
        tls = [f"--ca={srv / 'ca.crt'}", f"--cert={srv / 'probe.crt'}", f"--key={srv / 'probe.key'}"]
        assert probe.main([address, *tls]) == 0
        assert probe.main([address, "--timeout", "2"]) == 1  # plaintext to a TLS port
        assert probe.main([address, "--timeout", "2", tls[0]]) == 1  # no client certificate
    finally:
        server.stop(None)


# ------------------------------------------------------------------------------------------------ scale-out
class _Override(list):
    """A sequence tagged ``!override`` in an override file: it replaces the base's instead of merging."""


class _ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's merge tags (``!override``; ``!reset`` drops the key)."""


_ComposeLoader.add_constructor("!override", lambda loader, node: _Override(loader.construct_sequence(node)))
_ComposeLoader.add_constructor("!reset", lambda loader, node: None)
REPLACED = {"command", "entrypoint", "test"}  # sequences Compose replaces; other sequences are merged


def merge(base, override, key: str = ""):
    """Compose's merge of an override file onto a base (the rules this repository's files use): mappings merge
    key by key, ``command``/``entrypoint``/``healthcheck.test`` and ``!override`` sequences replace, ``volumes``
    merge by container path, other sequences append what is new."""
    if isinstance(override, _Override) or (key in REPLACED and isinstance(override, list)):
        return list(override)
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            if v is None and k in out:
                del out[k]
            else:
                out[k] = merge(base.get(k), v, k)
        return out
    if isinstance(base, list) and isinstance(override, list):
        if key == "volumes":  # SOURCE:TARGET[:MODE], keyed by TARGET
            replaced = {v.split(":")[1] for v in override}
            return [v for v in base if v.split(":")[1] not in replaced] + list(override)
        return base + [v for v in override if v not in base]
    return override


def load_scale_out(env: dict[str, str] | None = None) -> dict:
    """docker-compose.yml with compose.scale-out.yml merged on top; like Compose, each file is interpolated first."""
    override = interpolate(yaml.load(SCALE_OUT.read_text(), _ComposeLoader),
                           {"MVIC_START_AT_NS": START_AT} if env is None else env)
    return merge(load_compose(env), override)


@pytest.fixture(scope="module")
def scaled() -> dict:
    return load_scale_out()


def scaled_server_command(compose: dict, address: str = "172.18.0.5") -> list[str]:
    """What a replica's entrypoint runs: the shell line is run here by ``sh`` with a stand-in ``mvic-server`` that
    prints its arguments and a stand-in ``python`` that prints ``address`` (the container's own address), so the
    quoting is checked as Compose and the shell would do it."""
    service = compose["services"]["server"]
    line = list(service["entrypoint"]) + list(service["command"])
    bin_dir = Path(tempfile.mkdtemp(prefix="mvic-scale-out-"))
    try:
        (bin_dir / "mvic-server").write_text("#!/bin/sh\nprintf '%s\\0' \"$@\"\n")
        (bin_dir / "python").write_text(f"#!/bin/sh\necho {address}\n")
        for stub in bin_dir.iterdir():
            stub.chmod(0o755)
        done = subprocess.run(line, capture_output=True, check=True, timeout=30,
                              env={"PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"})
    finally:
        shutil.rmtree(bin_dir, ignore_errors=True)
    return done.stdout.decode().split("\0")[:-1]


def test_scale_out_changes_only_the_server_and_prometheus(compose, scaled):
    assert set(scaled["services"]) == set(compose["services"])
    for name in compose["services"]:
        if name not in ("server", "prometheus"):
            assert scaled["services"][name] == compose["services"][name], name
    assert scaled["services"]["server"]["deploy"]["replicas"] >= 2
    assert scaled["services"]["server"]["deploy"]["resources"] == compose["services"]["server"]["deploy"]["resources"]
    assert scaled["services"]["server"]["command"] == compose["services"]["server"]["command"]


def test_scale_out_replicas_run_the_base_command_line_plus_the_cluster_flags(compose, scaled, capsys):
    """Each replica names itself by its own address; the peers are the name the nodes dial; the shared output
    volume holds idempotent outputs only, with one ack journal per server."""
    from mvic.fusion_server import cli as server_cli

    argv_ = scaled_server_command(scaled, "172.18.0.5")
    assert argv_[:len(compose["services"]["server"]["command"])] == compose["services"]["server"]["command"]
    args = on_host(scaled, "server", argv_)
    parsed = server_cli.build_parser().parse_args(args)
    mount = mount_of(scaled["services"]["server"], parsed.config)
    args = [a.replace(parsed.config, str(ROOT / mount.source / Path(parsed.config).relative_to(mount.target)))
            for a in args]
    config = server_cli.config_from_args(server_cli.build_parser().parse_args(args))
    assert server_cli.main(args + ["--validate-config"]) == 0, capsys.readouterr().err
    assert config.cluster.self == f"172.18.0.5:{_port(config.listen)}"
    for name, node in node_configs(scaled).items():
        assert node.server == config.cluster.peers == f"dns:///server:{_port(config.listen)}", name
        assert node.link.lb == "ring_hash", f"{name}: the cameras of a group must reach one replica"
    assert config.sinks.png and not config.sinks.video, "a video file cannot be shared by replicas"
    out = mount_of(scaled["services"]["server"], config.out)
    assert out is not None and not out.is_bind and config.journal_dir != Path(config.out)


def test_scale_out_replica_reads_its_own_address():
    """The line the entrypoint runs to learn the container's address prints one IP address."""
    raw = yaml.load(SCALE_OUT.read_text(), _ComposeLoader)["services"]["server"]["entrypoint"][2]
    (snippet,) = re.findall(r"python -c '([^']+)'", raw)
    import socket

    try:
        expected = socket.gethostbyname(socket.gethostname())
    except OSError:
        pytest.skip("this machine's host name does not resolve (a container's always does)")
    done = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, check=True, timeout=30)
    assert ipaddress.ip_address(done.stdout.strip()) == ipaddress.ip_address(expected)


def test_scale_out_publishes_one_live_page_port_per_replica_on_loopback(scaled):
    replicas = scaled["services"]["server"]["deploy"]["replicas"]
    (spec,) = scaled["services"]["server"]["ports"]
    host, ports, container = str(spec).rsplit(":", 2)
    first, _, last = ports.partition("-")
    assert host == "127.0.0.1" and int(container) == 8080 and int(last) - int(first) + 1 >= replicas
    for name, service in scaled["services"].items():
        for other in service.get("ports", []):
            assert str(other).startswith("127.0.0.1:"), f"{name} publishes {other} beyond this host"


def test_scale_out_prometheus_finds_every_replica_by_the_service_name(scaled, server):
    config, _ = server
    prometheus = scaled["services"]["prometheus"]
    config_flag = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    mount = mount_of(prometheus, config_flag.partition("=")[2])
    assert mount and mount.is_bind and (ROOT / mount.source) == DEPLOY / "prometheus.scale-out.yml"
    base_mounts = mounts(load_compose()["services"]["prometheus"])
    assert {m.target for m in mounts(prometheus)} == {m.target for m in base_mounts}
    jobs = {j["job_name"]: j for j in yaml.safe_load((ROOT / mount.source).read_text())["scrape_configs"]}
    (sd,) = jobs["mvic-server"]["dns_sd_configs"]
    assert sd["names"] == ["server"] and sd["type"] == "A" and sd["port"] == config.metrics_port
    base = {j["job_name"]: j for j in yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]}
    assert jobs["mvic-node"] == base["mvic-node"]
