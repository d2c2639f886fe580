"""Several mvic-server processes behind one name (a static ``ipv4:`` list), nodes with ring_hash channels.

Every camera group is decoded jointly on exactly one server, its owner on the ring (the test places the groups with
``mvic.fusion_server.ring``, a pure function, so that nodes and servers start at once; every server then confirms
the placement over the wire: it refuses a Hello for another server's group with UNAVAILABLE and the owner in the
``mvic-owner`` trailer). Then the owner of one group is SIGKILLed mid-stream: its group moves to the ring's next
server within MOVE_BOUND_S, joint decoding of all its cameras resumes there, the other groups stay where they were,
and the shared output holds exactly one PNG per camera and capture time (frames the dead server wrote but never
acknowledged are decoded again and written to the same name).

The default suite runs 2 servers and 4 nodes in 2 groups (about 60 s here); ``-m slow`` runs 3 servers and 9 nodes
in 3 groups (12 processes importing torch: about two minutes on a loaded 2-core machine).
"""

from __future__ import annotations

import json
import time

import grpc
import pytest

from mvic.fusion_server.ring import Ring
from mvic.shared.bitstream import FORMAT_VERSION
from mvic.shared.rpc import CAMERA_METADATA_KEY, GROUP_METADATA_KEY, OWNER_METADATA_KEY
from mvic.shared.rpc import mvic_pb2 as pb
from tests.e2e.harness import RUN_TIMEOUT_S, RawCamera, capture_times, png_names, spooled

REFRESH_S, PROBE_S = 1.0, 0.5
#: A dead server's groups are taken by the next one within: its refresh (1 s) and probe (0.5 s), the nodes' reconnect
#: backoff (<= 1 s, gRPC's own subchannel backoff as much) and a stream's handshake, on a loaded machine.
MOVE_BOUND_S = 15.0


def owner_of(address: str, group: str) -> str:
    """Ask the server at ``address`` who owns ``group``: itself (it takes the Hello past the ownership check and then
    refuses the made-up model) or the server its UNAVAILABLE names in the ``mvic-owner`` trailer."""
    hello = pb.Hello(camera_id="C1", group_id=group, model_id=0, weights_hash=bytes(8),
                     format_version=FORMAT_VERSION, node_version="test", session_ns=1)
    cam = RawCamera(address, hello, metadata=((CAMERA_METADATA_KEY, "C1"), (GROUP_METADATA_KEY, group)))
    try:
        end = cam.next()
    finally:
        cam.close()
    assert isinstance(end, grpc.RpcError), end
    if end.code() == grpc.StatusCode.UNAVAILABLE:
        return dict(end.trailing_metadata())[OWNER_METADATA_KEY]
    return address


def decoded(stats: dict[str, float], group: str) -> float:
    """View sets of ``group`` this server decoded."""
    return stats.get(f'mvic_server_camera_group_views_count{{group="{group}"}}', 0.0)


def joint(stats: dict[str, float], group: str, k: int) -> float:
    """View sets of ``group`` this server decoded with at least ``k`` views."""
    below = stats.get(f'mvic_server_camera_group_views_bucket{{group="{group}",le="{k - 1}.0"}}', 0.0)
    return decoded(stats, group) - below


def run_cluster(cluster, servers: int, group_size: int, lead_s: float, frames: int) -> dict[str, float]:
    """``servers`` servers, one group of ``group_size`` cameras owned by each; ``lead_s``: from starting every
    process to the first capture (they import torch meanwhile, on a shared machine); ``frames`` per camera at 4 fps:
    enough that capture goes on well after every process is up, so that the kill lands mid-stream."""
    cameras = [f"C{i + 1}" for i in range(servers * group_size)]
    cluster.start_servers(servers, cameras=cameras, refresh_s=REFRESH_S, probe_timeout_s=PROBE_S)
    addresses = cluster.cluster_addresses
    ring = Ring.build(addresses)  # the nodes start at once; the servers confirm the choice over the wire below
    owners: dict[str, str] = {}
    for i in range(1000):
        if (owner := ring.owner(f"site-{i}")) not in owners.values():
            owners[f"site-{i}"] = owner
        if len(owners) == servers:
            break
    groups = list(owners)
    members = {g: cameras[k * group_size:(k + 1) * group_size] for k, g in enumerate(groups)}
    start_at = time.time_ns() + int(lead_s * 1e9)
    for g, cams in members.items():
        for cam in cams:
            cluster.start_node(cam, start_at_ns=start_at, frames=frames, server=cluster.cluster_target,
                               scene_cameras=len(cameras), group=g)
    cluster.wait_servers_ready()
    cluster.wait_for(lambda: all(cluster._metric(m, 'mvic_server_cluster_members{state="alive"}') == servers
                                 for m in cluster.cluster_metrics), 10 * REFRESH_S, "every server to see the others",
                     watch=cluster.servers)
    assert {g: owner_of(addresses[0], g) for g in groups} == owners  # the servers' ring is the nodes' ring

    index = {a: i for i, a in enumerate(addresses)}
    # Until a server sees the others it owns every group (nodes that came early may have been served there): the
    # steady state is what follows the membership's convergence, counted from here.
    time.sleep(REFRESH_S)
    base = [cluster.cluster_stats(i) for i in range(servers)]
    stats = [lambda i=i: {k: v - base[i].get(k, 0.0) for k, v in cluster.cluster_stats(i).items()}
             for i in range(servers)]
    cluster.wait_for(lambda: all(joint(stats[index[owners[g]]](), g, group_size) >= 4 for g in groups),
                     RUN_TIMEOUT_S, f"every group decoded jointly ({group_size} views) on its owner",
                     watch=cluster.servers + list(cluster.nodes.values()))  # a node done early: too few frames
    for g in groups:  # each group on its owner alone
        decoded_on = [a for a in addresses if decoded(stats[index[a]](), g)]
        assert decoded_on == [owners[g]], (g, decoded_on, cluster.logs())

    victim_group = groups[-1]
    victim = index[owners[victim_group]]
    cluster.servers[victim].kill()
    killed = time.monotonic()
    survivors = [i for i in range(servers) if i != victim]
    heir = index[ring.owner(victim_group, {addresses[i] for i in survivors})]
    cluster.wait_for(lambda: decoded(stats[heir](), victim_group) > 0, MOVE_BOUND_S,
                     f"group {victim_group} to move to {addresses[heir]}",
                     watch=[cluster.servers[i] for i in survivors])
    move_s = time.monotonic() - killed

    codes = cluster.wait_nodes_done(cameras)
    assert codes == {c: 0 for c in cameras}, cluster.logs()
    expected = sorted(capture_times(start_at, frames))
    for cam in cameras:  # exactly once in the shared store: one PNG per capture time, none missing, none extra
        assert png_names(cluster.out, cam) == expected, f"camera {cam}\n{cluster.logs()}"
        assert not list((cluster.out / cam).glob("*.part")), f"partial files left in {cluster.out / cam}"
        assert spooled(cluster.spool, cam) == [], f"spool of {cam} not empty"
    heir_joint = joint(stats[heir](), victim_group, group_size)
    assert heir_joint >= 3, cluster.logs()  # all its cameras decoded jointly again, on the new owner
    for i in survivors:  # the other groups stayed where they were; the moved one went to the heir only
        mine = {g for g in groups if owners[g] == addresses[i]} | ({victim_group} if i == heir else set())
        assert {g for g in groups if decoded(stats[i](), g)} == mine
    assert not (cluster.out / "acks.json").exists()  # one journal per server in the shared store
    for i in survivors:  # (the killed one may have died before its first ack)
        journal = cluster.out / ".servers" / f"127.0.0.1_{cluster.cluster_ports[i]}" / "acks.json"
        assert json.loads(journal.read_text())["cameras"], journal
    assert all(cluster.servers[i].alive for i in survivors)
    return {"move_s": move_s, "heir_joint_sets": heir_joint}


def test_two_servers_split_the_groups_and_one_takes_over_from_the_other(cluster):
    result = run_cluster(cluster, servers=2, group_size=2, lead_s=25.0, frames=80)
    print(f"group moved in {result['move_s']:.1f} s; {result['heir_joint_sets']:.0f} joint view sets on its heir")
    assert result["move_s"] < MOVE_BOUND_S


@pytest.mark.slow  # 12 processes importing torch
def test_three_servers_nine_cameras_failover(cluster):
    result = run_cluster(cluster, servers=3, group_size=3, lead_s=60.0, frames=160)
    print(f"group moved in {result['move_s']:.1f} s; {result['heir_joint_sets']:.0f} joint view sets on its heir")
    assert result["move_s"] < MOVE_BOUND_S
