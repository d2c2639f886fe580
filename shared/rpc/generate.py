"""Regenerate ``mvic_pb2.py`` and ``mvic_pb2_grpc.py`` from ``proto/mvic/v1/mvic.proto``.

    python -m mvic.shared.rpc.generate          # rewrite the stubs
    python -m mvic.shared.rpc.generate --check  # exit 1 when the committed stubs differ from the .proto

Uses grpc_tools.protoc (the ``dev`` extra). The generated gRPC module imports ``mvic_pb2`` by its proto path; it is
rewritten to ``from mvic.shared.rpc import mvic_pb2`` so the stubs live in the ``mvic.shared.rpc`` package.
``--check`` compares the file descriptors (what the .proto means), so a different grpcio-tools release that only
changes version comments does not count as stale.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PROTO_ROOT = REPO / "proto"
PROTO = Path("mvic/v1/mvic.proto")  # relative to PROTO_ROOT
STUBS = ("mvic_pb2.py", "mvic_pb2_grpc.py")
_GRPC_IMPORT = re.compile(r"^from mvic\.v1 import mvic_pb2 as (\w+)$", re.MULTILINE)


def _protoc(out_dir: Path, *extra: str) -> None:
    import importlib.resources

    from grpc_tools import protoc  # dev extra; imported here so the stubs never need it

    include = str(importlib.resources.files("grpc_tools") / "_proto")
    args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}", *extra, str(PROTO)]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code} on {PROTO_ROOT / PROTO}")


def generate(out_dir: Path) -> list[Path]:
    """Write both stubs into out_dir and return their paths."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        _protoc(tmp_path, f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}")
        gen = tmp_path / PROTO.parent
        pb2 = (gen / "mvic_pb2.py").read_text()
        grpc_src = (gen / "mvic_pb2_grpc.py").read_text()
    grpc_src, n = _GRPC_IMPORT.subn(r"from mvic.shared.rpc import mvic_pb2 as \1", grpc_src)
    if n != 1:
        raise RuntimeError("generated mvic_pb2_grpc.py no longer imports mvic_pb2 the expected way; fix generate.py")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in zip(STUBS, (pb2, grpc_src)):
        path = out_dir / name
        path.write_text(text)
        paths.append(path)
    return paths


def _descriptor(pb2_source: str):
    """The FileDescriptorProto serialized in a generated mvic_pb2.py, or None when there is none."""
    import ast

    from google.protobuf import descriptor_pb2

    found = re.search(r"AddSerializedFile\((b'.*?')\)", pb2_source, re.DOTALL)
    if not found:
        return None
    return descriptor_pb2.FileDescriptorProto.FromString(ast.literal_eval(found.group(1)))


def stale_reasons() -> list[str]:
    """Why the committed stubs do not match the .proto (empty list = up to date)."""
    reasons = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        fresh = generate(tmp_path / "stubs")
        missing = [name for name in STUBS if not (HERE / name).exists()]
        if missing:
            return [f"{name} is missing" for name in missing]
        expected = _descriptor(fresh[0].read_text())
        actual = _descriptor((HERE / STUBS[0]).read_text())
        if actual is None or actual != expected:
            reasons.append("mvic_pb2.py describes another version of mvic.proto")
        service_names = set(re.findall(r"'/mvic\.v1\.\w+/\w+'", fresh[1].read_text()))
        if service_names != set(re.findall(r"'/mvic\.v1\.\w+/\w+'", (HERE / STUBS[1]).read_text())):
            reasons.append("mvic_pb2_grpc.py lists other RPC methods than mvic.proto")
        if "from mvic.shared.rpc import mvic_pb2" not in (HERE / STUBS[1]).read_text():
            reasons.append("mvic_pb2_grpc.py does not import mvic.shared.rpc.mvic_pb2")
    return reasons


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mvic.shared.rpc.generate", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that the committed stubs are up to date")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.check:
        reasons = stale_reasons()
        for reason in reasons:
            print(f"stale: {reason}; run python -m mvic.shared.rpc.generate", file=sys.stderr)
        return 1 if reasons else 0
    for path in generate(HERE):
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
