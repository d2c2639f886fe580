"""deploy/k8s checked offline: Kubernetes schemas, the real CLIs, and the manifests against each other.

No cluster and no kustomize binary: ``load_bundle`` does what ``kubectl apply -k deploy/k8s`` would send, the listed
resources plus the generated ConfigMap and Secrets (the Secrets from certificates that ``make-certs.sh`` makes here
with ``mvic-certs`` itself), with the namespace set. Then every object is validated against the Kubernetes JSON
schemas (``kubernetes-validate``, bundled, strict: unknown fields are errors); every container's command line goes
through the parser and configuration loader of the program it runs (``$(VAR)`` expanded from its env as the kubelet
does, each file path in a mounted ConfigMap or Secret replaced by that file written out here); and ports, probes,
mounts, Secrets, Prometheus annotations and the service name the cameras and servers dial are checked to agree.

Each check takes a ``Bundle``, so ``test_a_broken_manifest_is_caught`` can run it on mutated copies: a check that
passes whatever the manifests say would be caught there.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import copy
import functools
import io
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
import yaml
from cryptography import x509

from mvic.fusion_server import cli as server_cli
from mvic.node import cli as node_cli

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
CAMERAS = tuple(f"C{k}" for k in range(1, 8))
K8S_VERSIONS = ("1.30", "1.34")  # oldest and a recent supported release; both bundled by kubernetes-validate
POD_IP = "10.244.3.17"           # what the downward API's status.podIP gives a server pod
POD_NAME = "mvic-server-0"        # what the downward API's metadata.name gives it
GRPC_STOP_S = 2.0                # FusionApp.stop: the gRPC server's own grace after the core drained
NOT_MANIFESTS = {"kustomization.yaml", "server-config.yaml"}  # kustomize's input, the ConfigMap's source
CLUSTER_SCOPED = {"Namespace"}


# ------------------------------------------------------------------------------------------ what kustomize builds
@dataclass
class Bundle:
    kustomization: dict
    objects: list[dict]

    def of(self, kind: str) -> list[dict]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict:
        (found,) = [o for o in self.of(kind) if o["metadata"]["name"] == name] or [None]
        assert found is not None, f"no {kind} {name}"
        return found


@functools.cache
def made_certs() -> Path:
    """What ``make-certs.sh`` writes, made here into a temporary folder by the script itself (mvic-certs from this
    environment on PATH)."""
    root = Path(tempfile.mkdtemp(prefix="mvic-k8s-certs-"))
    atexit.register(shutil.rmtree, root, True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run(["sh", str(K8S / "make-certs.sh"), str(root / "certs")], check=True, env=env,
                   capture_output=True, timeout=120)
    return root


def _generator_files(entry: dict) -> dict[str, Path]:
    """A generator's ``files`` (``key=path`` or ``path``, key = its base name) -> key: the file; ``certs/...`` are
    the ones make-certs.sh made."""
    out = {}
    for spec in entry.get("files", []):
        key, _, path = spec.rpartition("=")
        source = (made_certs() if path.startswith("certs/") else K8S) / path
        assert source.is_file(), f"{entry['name']}: {path} is not made by make-certs.sh nor in deploy/k8s"
        out[key or Path(path).name] = source
    return out


def load_bundle() -> Bundle:
    kz = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects = [doc for name in kz["resources"] for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]
    for entry in kz.get("configMapGenerator", []):
        data = {k: f.read_text() for k, f in _generator_files(entry).items()}
        objects.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": entry["name"]}, "data": data})
    for entry in kz.get("secretGenerator", []):
        data = {k: base64.b64encode(f.read_bytes()).decode() for k, f in _generator_files(entry).items()}
        objects.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": entry["name"]},
                        "type": entry.get("type", "Opaque"), "data": data})
    for o in objects:
        if o["kind"] not in CLUSTER_SCOPED:
            o["metadata"]["namespace"] = kz["namespace"]  # kustomize's namespace transformer
    return Bundle(kz, objects)


@functools.cache
def _pristine() -> Bundle:
    return load_bundle()


@pytest.fixture
def bundle() -> Bundle:
    return copy.deepcopy(_pristine())


# ----------------------------------------------------------------------------------------------- inside a pod
@dataclass(frozen=True)
class Container:
    """One container of a workload, with its pod spec and the files the kubelet would mount for it."""
    workload: dict
    spec: dict

    @property
    def pod(self) -> dict:
        return self.workload["spec"]["template"]["spec"]

    @property
    def name(self) -> str:
        return self.workload["metadata"]["name"]

    def volume(self, mount_path: str) -> tuple[dict, dict]:
        """(volumeMount, volume) of the deepest mount holding ``mount_path``."""
        found = [m for m in self.spec.get("volumeMounts", [])
                 if mount_path == m["mountPath"] or mount_path.startswith(m["mountPath"].rstrip("/") + "/")]
        assert found, f"{self.name}: {mount_path} is not in any volume"
        mount = max(found, key=lambda m: len(m["mountPath"]))
        (volume,) = [v for v in self.pod["volumes"] if v["name"] == mount["name"]]
        return mount, volume

    def env(self, bundle: Bundle) -> dict[str, str]:
        out = {}
        for e in self.spec.get("env", []):
            ref = e.get("valueFrom", {})
            if "value" in e:
                out[e["name"]] = e["value"]
            elif ref.get("fieldRef", {}).get("fieldPath") == "status.podIP":
                out[e["name"]] = POD_IP
            elif ref.get("fieldRef", {}).get("fieldPath") == "metadata.name":
                out[e["name"]] = POD_NAME
            elif "configMapKeyRef" in ref:
                key = ref["configMapKeyRef"]
                out[e["name"]] = bundle.get("ConfigMap", key["name"])["data"][key["key"]]
            elif "secretKeyRef" in ref:
                key = ref["secretKeyRef"]
                out[e["name"]] = base64.b64decode(bundle.get("Secret", key["name"])["data"][key["key"]]).decode()
        return out

    def argv(self, bundle: Bundle, entrypoint: str) -> list[str]:
        """The image's ENTRYPOINT (``entrypoint``, the image's name: deploy/*.Dockerfile) and args, $(VAR) expanded
        as the kubelet does."""
        image = self.spec["image"].rpartition("/")[2].partition(":")[0]
        assert image == entrypoint and self.spec.get("command", [entrypoint]) == [entrypoint], \
            f"{self.name} does not run {entrypoint}"
        env = self.env(bundle)
        expand = functools.partial(re.sub, r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)))
        args = [expand(a) for a in self.spec.get("args", [])]
        unexpanded = [a for a in args if "$(" in a]
        assert not unexpanded, f"{self.name}: {unexpanded} name variables its env does not define"
        return [entrypoint, *args]

    def on_host(self, bundle: Bundle, arg: str) -> str:
        """``arg`` with a path inside a mounted ConfigMap or Secret replaced by that file, written out here."""
        match = re.search(r"(/[\w./\-]+)$", arg)
        if not match:
            return arg
        path = match.group(1)
        if not any(path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
                   for m in self.spec.get("volumeMounts", [])):
            return arg
        mount, volume = self.volume(path)
        if "configMap" in volume:
            data = {k: v.encode() for k, v in bundle.get("ConfigMap", volume["configMap"]["name"])["data"].items()}
        elif "secret" in volume:
            data = {k: base64.b64decode(v) for k, v in
                    bundle.get("Secret", volume["secret"]["secretName"])["data"].items()}
        else:
            return arg
        folder = Path(tempfile.mkdtemp(prefix="mvic-k8s-mount-"))
        atexit.register(shutil.rmtree, folder, True)
        for key, value in data.items():
            (folder / key).write_bytes(value)
        rel = Path(path).relative_to(mount["mountPath"])
        host = folder / mount["subPath"] / rel if mount.get("subPath") else folder / rel
        assert host.exists(), f"{self.name}: {path} is not in {volume['name']} ({sorted(data)})"
        return arg[:match.start(1)] + str(host)


def containers(bundle: Bundle, app: str) -> list[Container]:
    """The containers of the workloads labelled app.kubernetes.io/name=<app>."""
    out = []
    for o in bundle.objects:
        if o["kind"] in ("Deployment", "StatefulSet") and o["metadata"]["labels"]["app.kubernetes.io/name"] == app:
            out += [Container(o, c) for c in o["spec"]["template"]["spec"]["containers"]]
    return out


def server(bundle: Bundle) -> tuple[Container, object, list[str]]:
    """The server container, the ServerConfig of its command line and that command line with host paths."""
    (c,) = containers(bundle, "mvic-server")
    argv = [c.on_host(bundle, a) for a in c.argv(bundle, "mvic-server")[1:]]
    return c, server_cli.config_from_args(server_cli.build_parser().parse_args(argv)), argv


def nodes(bundle: Bundle) -> dict[str, tuple[Container, object]]:
    """Camera id -> (its container, the NodeConfig of its command line)."""
    out = {}
    for c in containers(bundle, "mvic-node"):
        argv = [c.on_host(bundle, a) for a in c.argv(bundle, "mvic-node")[1:]]
        config = node_cli.config_from_args(node_cli.build_parser().parse_args(argv))
        assert config.camera not in out, f"two nodes run camera {config.camera}"
        out[config.camera] = (c, config)
    return out


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def _container_port(c: Container, port) -> int:
    """A probe's or Service's port (a number or a container port's name) as a number."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in c.spec.get("ports", []) if p.get("name") == port] or [None]
    assert number is not None, f"{c.name} has no port named {port}"
    return number


def service_target(bundle: Bundle) -> str:
    """The name cameras and servers dial: the headless Service's cluster DNS name and port."""
    (svc,) = bundle.of("Service")
    port = svc["spec"]["ports"][0]["port"]
    return f"dns:///{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local:{port}"


def _dial_host(target: str) -> str:
    return target.removeprefix("dns:///").rpartition(":")[0]


def _cert(path: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def _sans(cert: x509.Certificate, kind) -> list:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(kind)
    except x509.ExtensionNotFound:
        return []


# ------------------------------------------------------------------------------------------------------ checks
def check_schemas(bundle: Bundle) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[dev]' (kubernetes-validate)")
    for o in bundle.objects:
        for version in K8S_VERSIONS:
            try:
                kv.validate(o, version, strict=True)
            except kv.ValidationError as exc:
                raise AssertionError(f"{o['kind']} {o['metadata']['name']} (Kubernetes {version}): "
                                     f"{exc.message} at {'.'.join(map(str, exc.path))}") from None


def check_kustomization(bundle: Bundle) -> None:
    kz = bundle.kustomization
    manifests = {p.name for p in K8S.glob("*.yaml")} - NOT_MANIFESTS
    assert set(kz["resources"]) == manifests, "kustomization.yaml resources and deploy/k8s/*.yaml disagree"
    (ns,) = bundle.of("Namespace")
    assert ns["metadata"]["name"] == kz["namespace"]
    names = [(o["kind"], o["metadata"]["name"]) for o in bundle.objects]
    assert len(names) == len(set(names)), "an object is defined twice"
    images = {i["name"] for i in kz.get("images", [])}
    for o in bundle.objects:
        for c in o.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            assert c["image"].partition(":")[0] in images, f"{c['image']} is not in kustomization.yaml images"
    ca_key = (made_certs() / "certs" / "ca" / "ca.key").read_bytes()
    for secret in bundle.of("Secret"):
        for key, value in secret["data"].items():
            assert base64.b64decode(value) != ca_key, f"{secret['metadata']['name']} carries the CA key as {key}"
    written = [o["metadata"]["name"] for o in bundle.objects if o["kind"] == "Secret"]
    generated = [e["name"] for e in kz.get("secretGenerator", [])]
    assert written == generated, "Secrets come from make-certs.sh through secretGenerator, never from a manifest"


def check_server_command_line(bundle: Bundle) -> None:
    """The real parser and loader, then --validate-config (which also checks the files the config names)."""
    _, config, argv = server(bundle)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = server_cli.main(argv + ["--validate-config"])
    assert code == 0, err.getvalue()
    assert config.tls.enabled and not config.insecure, "the gRPC port must speak mutual TLS"
    assert config.http_token_file and config.http_cert, "the live page needs its token and HTTPS"


def check_service(bundle: Bundle) -> None:
    (svc,) = bundle.of("Service")
    (sts,) = bundle.of("StatefulSet")
    c, config, _ = server(bundle)
    spec = svc["spec"]
    assert spec.get("clusterIP") == "None", "the servers' Service must be headless (DNS answers every pod)"
    assert not spec.get("publishNotReadyAddresses", False), "a server not SERVING must not be in the answer"
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"].items() <= labels.items(), "the Service selects no server pod"
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (port,) = spec["ports"]
    assert port["port"] == _port(config.listen) == _container_port(c, port.get("targetPort", port["port"])), \
        f"Service port {port} and the server's --listen {config.listen} disagree"


def check_cluster(bundle: Bundle) -> None:
    """Servers find each other by the name the cameras dial, and name themselves by their pod IP."""
    _, config, _ = server(bundle)
    target = service_target(bundle)
    assert config.cluster.peers == target
    assert config.cluster.self == f"{POD_IP}:{_port(config.listen)}", "--cluster-self must be $(POD_IP):<gRPC port>"
    assert config.journal_dir != Path(config.out), "each server needs its own ack journal in the shared store"
    assert config.journal_dir.name == POD_NAME, "the journal must survive a new pod IP: --cluster-name=$(POD_NAME)"
    for camera, (_, node) in nodes(bundle).items():
        assert node.server == target, f"{camera} dials {node.server}, not the servers' Service {target}"
        assert node.link.lb == "ring_hash", f"{camera}: the cameras of a group must reach one server"


def check_probes(bundle: Bundle) -> None:
    """Readiness is the gRPC health of the mTLS port, asked with the probe certificate from inside the pod (the
    kubelet's grpc: probe cannot do TLS); liveness must not fail while the server drains."""
    c, config, _ = server(bundle)
    for kind in ("startupProbe", "readinessProbe"):
        probe = c.spec[kind]
        assert "grpc" not in probe, f"{kind}: the kubelet's grpc probe cannot dial a mutual-TLS port"
        command = probe["exec"]["command"]
        assert command[0] == "mvic-grpc-health" and command[1] == f"localhost:{_port(config.listen)}", kind
        files = dict(a[2:].split("=", 1) for a in command[2:])
        assert set(files) == {"ca", "cert", "key"}, f"{kind}: the probe needs --ca, --cert and --key"
        host = {k: c.on_host(bundle, v) for k, v in files.items()}
        probe_cert = _cert(host["cert"])
        probe_cert.verify_directly_issued_by(_cert(config.tls.client_ca))
        assert not _sans(probe_cert, x509.UniformResourceIdentifier), "the probe's certificate names no camera"
        assert Path(host["ca"]).read_bytes() == Path(config.tls.client_ca).read_bytes()
    assert "localhost" in _sans(_cert(config.tls.cert), x509.DNSName), "the probe dials localhost"
    startup = c.spec["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "the model load needs minutes"
    live = c.spec["livenessProbe"]
    assert "tcpSocket" in live and _container_port(c, live["tcpSocket"]["port"]) == _port(config.listen), \
        "liveness: the gRPC port accepts connections (health is NOT_SERVING during the drain)"


def check_drain(bundle: Bundle) -> None:
    c, config, _ = server(bundle)
    grace = c.pod["terminationGracePeriodSeconds"]
    assert grace > config.shutdown_grace_s + GRPC_STOP_S, \
        f"terminationGracePeriodSeconds {grace} must exceed shutdown_grace_s {config.shutdown_grace_s} + the gRPC stop"
    assert "lifecycle" not in c.spec, "SIGTERM itself starts the drain"
    (pdb,) = bundle.of("PodDisruptionBudget")
    labels = c.workload["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), "the disruption budget selects no server"


def check_gpu_and_resources(bundle: Bundle) -> None:
    c, config, _ = server(bundle)
    resources = c.spec["resources"]
    assert resources["limits"].get("nvidia.com/gpu") == 1 and config.device == "cuda:0", "one GPU, device 0"
    for c in containers(bundle, "mvic-server") + containers(bundle, "mvic-node"):
        for part in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c.spec["resources"][part]), f"{c.name}: {part}"
        assert c.pod["securityContext"]["runAsNonRoot"] and c.pod["securityContext"]["runAsUser"] == 10001


def check_shared_output(bundle: Bundle) -> None:
    """One ReadWriteMany volume at the same path in every server; only idempotent outputs on it."""
    c, config, _ = server(bundle)
    mount, volume = c.volume(config.out)
    claim = bundle.get("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "every server mounts the output store"
    assert "volumeClaimTemplates" not in c.workload["spec"], "the output store is shared, not per pod"
    assert not mount.get("readOnly") and not mount.get("subPath") and not mount.get("subPathExpr")
    assert config.sinks.png and not config.sinks.video, "a video file cannot be shared by servers"


def check_nodes(bundle: Bundle) -> None:
    found = nodes(bundle)
    _, config, _ = server(bundle)
    assert sorted(found) == list(CAMERAS) == sorted(config.cameras)
    claims = []
    for camera, (c, node) in found.items():
        spec = c.workload["spec"]
        assert c.workload["kind"] == "Deployment" and spec["replicas"] == 1, camera
        assert spec["strategy"]["type"] == "Recreate", f"{camera}: two pods would stream one camera"
        assert c.name == f"mvic-node-{camera.lower()}"
        assert spec["template"]["metadata"]["labels"]["mvic/camera"] == camera
        mount, volume = c.volume(node.spool.dir)
        claim = bundle.get("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and not mount.get("readOnly"), camera
        size = claim["spec"]["resources"]["requests"]["storage"]
        assert int(size.removesuffix("Gi")) << 30 > node.spool.max_bytes, f"{camera}: spool volume {size}"
        claims.append(claim["metadata"]["name"])
        source = next(e for e in c.spec["env"] if e["name"] == "MVIC_SOURCE")["valueFrom"]["configMapKeyRef"]
        assert source["key"] == camera, f"{camera} reads the stream of {source['key']}"
        assert (node.encode.model, node.encode.weights) == (config.model, config.weights), camera
        argv, err = [c.on_host(bundle, a) for a in c.argv(bundle, "mvic-node")[1:]], io.StringIO()
        with mock.patch.object(node_cli, "preflight", lambda _: None), \
                contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = node_cli.main(argv + ["--validate-config"])  # the stream is not opened here
        assert code == 0, err.getvalue()
    assert len(set(claims)) == len(claims), "two nodes share a spool"


def check_certificates(bundle: Bundle) -> None:
    """Each node holds only its own Secret, whose certificate names its camera and group in the server's trust
    domain; the server's certificate names the Service the nodes dial."""
    from mvic.shared.identity import parse_camera_uri

    c, config, _ = server(bundle)
    secrets = [v["secret"]["secretName"] for v in c.pod["volumes"] if "secret" in v]
    assert secrets == ["mvic-server-tls"]
    server_names = _sans(_cert(config.tls.cert), x509.DNSName)
    for camera, (c, node) in nodes(bundle).items():
        secrets = [v["secret"]["secretName"] for v in c.pod["volumes"] if "secret" in v]
        assert secrets == [f"mvic-camera-{camera.lower()}"], f"{camera} mounts {secrets}"
        assert node.tls.enabled
        cert = _cert(node.tls.cert)
        (uri,) = _sans(cert, x509.UniformResourceIdentifier)
        identity = parse_camera_uri(uri)
        assert (identity.camera_id, identity.group_id, identity.trust_domain) == \
            (camera, node.group, config.tls.trust_domain), camera
        cert.verify_directly_issued_by(_cert(config.tls.client_ca))
        assert Path(node.tls.ca).read_bytes() == Path(config.tls.client_ca).read_bytes()
        assert (node.tls.server_name or _dial_host(node.server)) in server_names, camera
    for name in (f"mvic-server-{k}.{_dial_host(service_target(bundle))}" for k in range(3)):
        assert any(n == name or (n.startswith("*.") and name.endswith(n[1:])) for n in server_names), name


def check_prometheus(bundle: Bundle) -> None:
    """Scrape annotations name the metrics port each program opens, on an address Prometheus can reach."""
    c, config, _ = server(bundle)
    ports = [(c, config.metrics_port, config.metrics_host)]
    ports += [(c, n.metrics.port, n.metrics.host) for c, n in nodes(bundle).values()]
    for c, port, host in ports:
        notes = c.workload["spec"]["template"]["metadata"]["annotations"]
        assert notes["prometheus.io/scrape"] == "true" and notes["prometheus.io/path"] == "/metrics", c.name
        assert int(notes["prometheus.io/port"]) == port != 0, f"{c.name} scrapes {notes['prometheus.io/port']}"
        assert _container_port(c, "metrics") == port, c.name
        assert not ipaddress.ip_address(host).is_loopback, f"{c.name}: metrics bound to {host}"


CHECKS: dict[str, Callable[[Bundle], None]] = {f.__name__.removeprefix("check_"): f for f in (
    check_schemas, check_kustomization, check_server_command_line, check_service, check_cluster, check_probes,
    check_drain, check_gpu_and_resources, check_shared_output, check_nodes, check_certificates, check_prometheus)}


@pytest.mark.parametrize("name", CHECKS)
def test_manifests(bundle, name):
    CHECKS[name](bundle)


# ------------------------------------------------------------------------------------------- broken manifests
def _server_container(b: Bundle) -> dict:
    return b.get("StatefulSet", "mvic-server")["spec"]["template"]["spec"]["containers"][0]


def _node_container(b: Bundle, camera: str = "C1") -> dict:
    return b.get("Deployment", f"mvic-node-{camera.lower()}")["spec"]["template"]["spec"]["containers"][0]


def _replace_arg(container: dict, prefix: str, new: str) -> None:
    (i,) = [i for i, a in enumerate(container["args"]) if a.startswith(prefix)]
    container["args"][i] = new


def _set(path: str, value) -> Callable[[dict], None]:
    def apply(obj: dict) -> None:
        *parents, last = path.split(".")
        for p in parents:
            obj = obj[int(p)] if isinstance(obj, list) else obj[p]
        obj[int(last) if isinstance(obj, list) else last] = value
    return apply


MUTATIONS: dict[str, tuple[str, Callable[[Bundle], None]]] = {  # id -> (the check that must fail, mutation)
    "unknown-field": ("schemas", lambda b: _server_container(b).update(argz=["x"])),
    "replicas-not-a-number": ("schemas", lambda b: _set("spec.replicas", "two")(b.get("StatefulSet", "mvic-server"))),
    "ca-key-in-a-secret": ("kustomization", lambda b: b.get("Secret", "mvic-server-tls")["data"].update(
        {"ca.key": base64.b64encode((made_certs() / "certs" / "ca" / "ca.key").read_bytes()).decode()})),
    "file-not-in-kustomization": ("kustomization", lambda b: b.kustomization["resources"].remove("storage.yaml")),
    "unknown-server-flag": ("server_command_line", lambda b: _server_container(b)["args"].append("--bogus")),
    "bad-server-config": ("server_command_line", lambda b: b.get("ConfigMap", "mvic-server-config")["data"].update(
        {"server.yaml": "grouping: {tolerance_ms: -1}\n"})),
    "publish-not-ready": ("service", lambda b: _set("spec.publishNotReadyAddresses", True)(b.of("Service")[0])),
    "service-port": ("service", lambda b: _set("spec.ports.0.port", 50052)(b.of("Service")[0])),
    "node-dials-another-name": ("cluster", lambda b: _replace_arg(
        _node_container(b, "C3"), "--server=", "--server=dns:///mvic-server.default.svc.cluster.local:50051")),
    "node-pick-first": ("cluster", lambda b: _node_container(b, "C5")["args"].append("--set=link.lb=pick_first")),
    "self-not-pod-ip": ("cluster", lambda b: _replace_arg(
        _server_container(b), "--cluster-self=", "--cluster-self=mvic-server:50051")),
    "native-grpc-probe": ("probes", lambda b: _server_container(b).update(
        readinessProbe={"grpc": {"port": 50051}, "periodSeconds": 5})),
    "probe-wrong-port": ("probes", lambda b: _set("readinessProbe.exec.command.1", "localhost:50052")(
        _server_container(b))),
    "short-grace": ("drain", lambda b: _set("spec.template.spec.terminationGracePeriodSeconds", 15)(
        b.get("StatefulSet", "mvic-server"))),
    "no-gpu": ("gpu_and_resources", lambda b: _server_container(b)["resources"]["limits"].pop("nvidia.com/gpu")),
    "output-read-write-once": ("shared_output", lambda b: _set("spec.accessModes", ["ReadWriteOnce"])(
        b.get("PersistentVolumeClaim", "mvic-out"))),
    "video-on-shared-store": ("shared_output", lambda b: _server_container(b)["args"].append("--video")),
    "rolling-node": ("nodes", lambda b: _set("spec.strategy", {"type": "RollingUpdate"})(
        b.get("Deployment", "mvic-node-c2"))),
    "shared-spool": ("nodes", lambda b: _set("spec.template.spec.volumes.1.persistentVolumeClaim.claimName",
                                             "mvic-spool-c1")(b.get("Deployment", "mvic-node-c2"))),
    "node-with-another-camera-key": ("certificates", lambda b: _set(
        "spec.template.spec.volumes.0.secret.secretName", "mvic-camera-c5")(b.get("Deployment", "mvic-node-c4"))),
    "prometheus-port": ("prometheus", lambda b: b.get("StatefulSet", "mvic-server")["spec"]["template"]["metadata"]
                        ["annotations"].update({"prometheus.io/port": "9102"})),
    "metrics-on-loopback": ("prometheus", lambda b: _replace_arg(
        _node_container(b, "C6"), "--metrics-host=", "--metrics-host=127.0.0.1")),
}


@pytest.mark.parametrize("name", MUTATIONS)
def test_a_broken_manifest_is_caught(bundle, name):
    check, mutate = MUTATIONS[name]
    mutate(bundle)
    with pytest.raises((AssertionError, SystemExit, KeyError, ValueError)):
        CHECKS[check](bundle)


# ----------------------------------------------------------------------------------------------- documentation
def test_readme_covers_certificates_apply_scale_and_the_guarantee():
    text = (K8S / "README.md").read_text()
    lowered = text.lower()
    for needle in ("make-certs.sh", "kubectl apply -k deploy/k8s", "kubectl -n mvic scale statefulset mvic-server",
                   "terminationGracePeriodSeconds", "exactly once", "at least once"):
        assert needle in text or needle in lowered, f"deploy/k8s/README.md does not mention {needle!r}"


def test_the_keys_make_certs_writes_are_ignored_by_git():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("deploy/k8s/certs/ca/ca.key", "deploy/k8s/certs/server/page-token", "deploy/k8s/certs/C1/C1.key"):
        done = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", path], check=False, timeout=30)
        assert done.returncode == 0, f"{path} is not git-ignored: the keys must never be committed"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (its built-in kustomize) is not installed")
def test_the_real_kustomize_builds_what_the_checks_looked_at(tmp_path):
    """Where kubectl is installed: ``kubectl kustomize`` on a copy with make-certs.sh's files builds the same
    objects (kind, name, namespace) as the emulation above, and every one passes the schemas."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy, ignore=shutil.ignore_patterns("certs"))
    shutil.copytree(made_certs() / "certs", copy / "certs")
    built = subprocess.run(["kubectl", "kustomize", str(copy)], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stderr
    real = [doc for doc in yaml.safe_load_all(built.stdout) if doc]

    generated = {e["name"] for e in _pristine().kustomization.get("configMapGenerator", [])}

    def key(o):  # kustomize appends a content hash to a generated ConfigMap's name (and to its references)
        name = o["metadata"]["name"]
        base = name.rsplit("-", 1)[0]
        return o["kind"], o["metadata"].get("namespace", ""), base if base in generated else name

    emulated = {key(o) for o in _pristine().objects}
    assert {key(o) for o in real} == emulated
    check_schemas(Bundle(_pristine().kustomization, real))
