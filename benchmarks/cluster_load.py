"""Cluster load run (issue 15): many simulated cameras in many groups across N loopback fusion servers, one of
which is SIGKILLed halfway; every frame must still be written exactly once.

    .venv/bin/python benchmarks/cluster_load.py [--servers 3] [--groups 20] [--per-group 3] [--fps 1]
                                                [--seconds 60] [--kill-at 0.5] [--work DIR]

Real ``mvic-server`` processes (``tests/e2e/harness.Cluster.start_servers``: one ``ipv4:`` name for all, a shared
``out``), the tiny test model. The cameras are light asyncio clients in this one process rather than node
processes: each has its own ring_hash ``grpc.aio`` channel on the ``mvic-group`` header (the service config and the
environment variable of ``mvic-node``), speaks the real protocol (Hello, Welcome, ViewPackets, cumulative Acks),
keeps its unacknowledged frames in memory as a node keeps them in its spool, resends them after every reconnect,
and reconnects through a new channel at once when a server names another owner (the ``mvic-owner`` trailer). Each
camera's bitstream is coded once; every frame is that bitstream with its own sequence and capture time.

Printed: views/s acknowledged over the run, p50/p99 capture -> ack latency (all frames, and those captured after the
kill), the groups the killed server owned and where they went (the ring's next owner or not), and per camera the
frames captured, on disk (``out/<camera>/<sequence>.png``), lost and extra. Exit status 1 when a frame is lost or
extra, a camera kept frames unacknowledged, or a group moved elsewhere than the ring says.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.e2e.harness, tests.conftest


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", type=int, default=3)
    p.add_argument("--groups", type=int, default=20)
    p.add_argument("--per-group", type=int, default=3, help="cameras per group")
    p.add_argument("--fps", type=float, default=1.0, help="frames per second per camera")
    p.add_argument("--seconds", type=float, default=60.0, help="capture time")
    p.add_argument("--kill-at", type=float, default=0.5, help="fraction of the capture time: SIGKILL one server")
    p.add_argument("--drain-s", type=float, default=120.0, help="after capture: wait this long for the last acks")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--work", default="", help="work folder (default: a new temporary one)")
    return p


@dataclass
class Camera:
    """One simulated camera: what it captured, what is not acknowledged yet, how long acks took."""

    name: str
    group: str
    bitstream: object  # ViewBitstream, coded once
    sent_from: int = 0
    captured: dict[int, int] = field(default_factory=dict)  # sequence -> capture_ns (every frame)
    unacked: dict[int, int] = field(default_factory=dict)  # sequence -> capture_ns
    latencies: list[tuple[int, float]] = field(default_factory=list)  # (capture_ns, seconds)
    streams: int = 0
    moved: int = 0  # streams ended by a "not the owner" answer
    rejected: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def capture(self, sequence: int, now_ns: int) -> None:
        self.captured[sequence] = self.unacked[sequence] = now_ns
        self.wake.set()

    def acked(self, through: int, now_ns: int) -> None:
        for seq in [s for s in self.unacked if s <= through]:
            capture = self.unacked.pop(seq)
            self.latencies.append((capture, (now_ns - capture) / 1e9))


async def run_camera(cam: Camera, target: str, stop: asyncio.Event, drained: asyncio.Event) -> None:
    """Streams until ``stop`` and every frame is acknowledged; reconnects like a node."""
    import grpc

    from mvic.shared.bitstream import pack
    from mvic.shared.rpc import (
        CAMERA_METADATA_KEY,
        GROUP_METADATA_KEY,
        OWNER_METADATA_KEY,
        channel_options,
        service_config,
    )
    from mvic.shared.rpc import mvic_pb2 as pb
    from mvic.shared.rpc.mvic_pb2_grpc import FusionStub

    header = cam.bitstream.header
    hello = pb.Hello(camera_id=cam.name, group_id=cam.group, model_id=header.model_id,
                     weights_hash=header.weights_hash, format_version=header.version, node_version="load",
                     session_ns=time.time_ns())
    metadata = ((CAMERA_METADATA_KEY, cam.name), (GROUP_METADATA_KEY, cam.group))
    options = [*channel_options(), ("grpc.service_config", service_config("ring_hash")),
               ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
               ("grpc.max_reconnect_backoff_ms", 1000)]
    channel = grpc.aio.insecure_channel(target, options=options)
    attempt = 0
    try:
        while not (stop.is_set() and not cam.unacked):
            cam.streams += 1
            call = FusionStub(channel).Stream(metadata=metadata)
            owner = ""
            sender = None
            try:
                await call.write(pb.NodeMessage(hello=hello))
                while (message := await call.read()) is not grpc.aio.EOF:
                    kind = message.WhichOneof("kind")
                    if kind == "welcome":
                        if message.welcome.has_acked:
                            cam.acked(message.welcome.acked_sequence, time.time_ns())
                        attempt = 0
                        sender = asyncio.create_task(_send(cam, call, pb, pack, stop))
                    elif kind == "ack":
                        cam.acked(message.ack.acked_sequence, time.time_ns())
                        if stop.is_set() and not cam.unacked:
                            break
                    elif kind == "error":
                        cam.rejected += 1
                        cam.unacked.pop(message.error.sequence, None)
                owner = dict(await call.trailing_metadata() or ()).get(OWNER_METADATA_KEY, "")
            except grpc.aio.AioRpcError as exc:
                owner = dict(exc.trailing_metadata() or ()).get(OWNER_METADATA_KEY, "")
            finally:
                if sender is not None:
                    sender.cancel()
                    await asyncio.gather(sender, return_exceptions=True)
                call.cancel()
            if stop.is_set() and not cam.unacked:
                break
            if owner:  # another server owns the group: resolve again through a new channel
                cam.moved += 1
                await channel.close()
                channel = grpc.aio.insecure_channel(target, options=options)
            ceiling = min(1.0, 0.2 * 2 ** attempt)
            attempt += 1
            await asyncio.sleep(random.uniform(ceiling / 2, ceiling))
    finally:
        await channel.close()
        drained.set()


async def _send(cam: Camera, call, pb, pack, stop: asyncio.Event, max_in_flight: int = 64) -> None:
    """Unacknowledged frames in order, then new ones as they are captured (at most max_in_flight unacked)."""
    cursor = 0
    while True:
        cam.wake.clear()
        ahead = [s for s in sorted(cam.unacked) if s > cursor]
        sent_unacked = sum(1 for s in cam.unacked if s <= cursor)
        if not ahead or sent_unacked >= max_in_flight:
            if stop.is_set() and not ahead:
                await call.done_writing()
                return
            try:
                await asyncio.wait_for(cam.wake.wait(), 0.5)
            except TimeoutError:
                pass
            continue
        seq = ahead[0]
        capture = cam.unacked[seq]
        bits = pack(replace(cam.bitstream, header=replace(cam.bitstream.header, sequence=seq, capture_ns=capture)))
        await call.write(pb.NodeMessage(packet=pb.ViewPacket(sequence=seq, capture_ns=capture,
                                                             sent_ns=time.time_ns(), bitstream=bits)))
        cursor = seq


async def capture_loop(cams: list[Camera], fps: float, seconds: float, stop: asyncio.Event) -> None:
    """Every camera captures frame i at start + i/fps (all cameras of a group at once: they join one view set)."""
    start = time.time_ns()
    frames = int(seconds * fps)
    for i in range(frames):
        due = start + round(i * 1e9 / fps)
        await asyncio.sleep(max(0.0, (due - time.time_ns()) / 1e9))
        for cam in cams:
            cam.capture(i + 1, due)
    stop.set()
    for cam in cams:
        cam.wake.set()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def load(args, cluster, cams: list[Camera]) -> dict:
    from mvic.fusion_server.ring import Ring

    stop = asyncio.Event()
    drained = [asyncio.Event() for _ in cams]
    target = cluster.cluster_target
    tasks = [asyncio.create_task(run_camera(cam, target, stop, d)) for cam, d in zip(cams, drained)]
    started = time.monotonic()
    capture = asyncio.create_task(capture_loop(cams, args.fps, args.seconds, stop))
    await asyncio.sleep(args.seconds * args.kill_at)
    addresses = cluster.cluster_addresses
    ring = Ring.build(addresses)
    groups = sorted({c.group for c in cams})
    owned = {a: [g for g in groups if ring.owner(g) == a] for a in addresses}
    victim = max(range(len(addresses)), key=lambda i: len(owned[addresses[i]]))
    before = [await asyncio.to_thread(cluster.cluster_stats, i) for i in range(len(addresses))]
    cluster.servers[victim].kill()
    killed_ns = time.time_ns()
    await capture
    try:
        await asyncio.wait_for(asyncio.gather(*(d.wait() for d in drained)), args.drain_s)
    except TimeoutError:
        pass
    finished = time.monotonic()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    alive = {a for i, a in enumerate(addresses) if i != victim}
    after = {i: await asyncio.to_thread(cluster.cluster_stats, i) for i in range(len(addresses)) if i != victim}
    return {"victim": victim, "owned": owned, "before": before, "after": after, "ring": ring, "alive": alive,
            "killed_ns": killed_ns, "elapsed": finished - started, "groups": groups}


def decoded(stats: dict, group: str) -> float:
    return stats.get(f'mvic_server_camera_group_views_count{{group="{group}"}}', 0.0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mvic.shared.rpc import RING_HASH_HEADER_ENV

    os.environ[RING_HASH_HEADER_ENV] = "true"  # before any channel exists, as mvic-node's main does
    import numpy as np

    from mvic.shared.codec.registry import export_weights
    from tests.conftest import make_tiny_model, random_image
    from tests.e2e.harness import Cluster

    root = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="mvic-cluster-load-"))
    root.mkdir(parents=True, exist_ok=True)
    model = make_tiny_model("test-tiny-fast")
    weights = root / "test-tiny-fast.safetensors"
    export_weights(model, weights)
    names = [f"C{i + 1}" for i in range(args.groups * args.per_group)]
    groups = [f"site-{g}" for g in range(args.groups)]
    rng = np.random.default_rng(0)
    cams = []
    for i, name in enumerate(names):
        view = model.compress_view(random_image(rng, args.height, args.width), 2, camera_id=name, sequence=1,
                                   capture_ns=1)
        cams.append(Camera(name, groups[i // args.per_group], view))
    cluster = Cluster(root, weights)
    try:
        cluster.start_servers(args.servers, cameras=names, max_wait_ms=2000.0, refresh_s=1.0, probe_timeout_s=0.5,
                              max_cameras=max(64, len(names)), sinks={"png": True, "png_name": "sequence"})
        cluster.wait_servers_ready(timeout=240)
        members = 'mvic_server_cluster_members{state="alive"}'
        cluster.wait_for(lambda: all(cluster._metric(m, members) == args.servers for m in cluster.cluster_metrics),
                         30, "the servers to see each other")
        print(f"{args.servers} servers on {cluster.cluster_target}; {len(cams)} cameras in {args.groups} groups at "
              f"{args.fps:g} fps for {args.seconds:g} s, {args.height}x{args.width}; SIGKILL at "
              f"{args.kill_at * args.seconds:.0f} s", flush=True)
        result = asyncio.run(load(args, cluster, cams))
    finally:
        cluster.close()
    return report(args, cluster, cams, result)


def report(args, cluster, cams: list[Camera], r: dict) -> int:
    addresses = cluster.cluster_addresses
    victim = addresses[r["victim"]]
    ok = True
    acked = sum(len(c.captured) - len(c.unacked) for c in cams)
    latencies = [s for c in cams for _, s in c.latencies]
    after_kill = [s for c in cams for cap, s in c.latencies if cap >= r["killed_ns"]]
    print(f"views acknowledged: {acked} in {r['elapsed']:.1f} s = {acked / r['elapsed']:.1f} views/s")
    print(f"capture -> ack latency: p50 {percentile(latencies, 0.5):.3f} s, p99 {percentile(latencies, 0.99):.3f} s "
          f"(captured after the kill: p50 {percentile(after_kill, 0.5):.3f} s, p99 {percentile(after_kill, 0.99):.3f}"
          f" s, max {max(after_kill, default=float('nan')):.3f} s)")
    moved = r["owned"][victim]
    print(f"killed {victim}, owner of {len(moved)} of {len(r['groups'])} groups; streams ended with a 'served by' "
          f"answer: {sum(c.moved for c in cams)}; reconnects: {sum(c.streams - 1 for c in cams)}")
    for g in moved:
        heir = r["ring"].owner(g, r["alive"])
        went = [addresses[i] for i, stats in r["after"].items()
                if decoded(stats, g) > decoded(r["before"][i], g)]
        right = went == [heir]
        ok &= right
        print(f"  group {g}: to {', '.join(went) or 'nowhere'} ({'the ring' if right else 'NOT the ring'}'s "
              f"next owner {heir})")
    lost = extra = 0
    for cam in cams:
        folder = cluster.out / cam.name
        on_disk = {int(p.stem) for p in folder.glob("*.png")} if folder.is_dir() else set()
        missing, surplus = set(cam.captured) - on_disk, on_disk - set(cam.captured)
        lost += len(missing)
        extra += len(surplus)
        if missing or surplus or cam.unacked or cam.rejected:
            print(f"  camera {cam.name}: captured {len(cam.captured)}, on disk {len(on_disk)}, lost {len(missing)}, "
                  f"extra {len(surplus)}, unacked {len(cam.unacked)}, rejected {cam.rejected}")
    partial = sum(1 for p in cluster.out.rglob("*.part"))
    unacked = sum(len(c.unacked) for c in cams)
    print(f"frames: captured {sum(len(c.captured) for c in cams)}, lost {lost}, extra {extra}, left unacknowledged "
          f"{unacked}, partial files {partial}")
    ok &= lost == extra == unacked == partial == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
