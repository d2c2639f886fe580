"""Several fusion servers, one owner per camera group: the live membership and the ring over it.

Hop before: ``cluster.peers`` in server.yaml, the name the nodes connect to (``dns:///host:port``: every A/AAAA
record; ``ipv4:a:port,b:port`` / ``ipv6:[a]:port,...``: that list as it is). The nodes' channels pick a server per
stream with gRPC's ``ring_hash`` policy on the ``mvic-group`` header (``mvic.shared.rpc.service_config``).
Hop after: the core (``core.FusionCore``) asks ``owner(group)`` at every Hello and refuses a group it does not own
(``errors.NotOwnerError``: UNAVAILABLE, the owner's address in the ``mvic-owner`` trailer, so that the node
re-resolves and reconnects at once); ``on_change`` makes it close the streams of the groups it stopped owning and
decode their open view sets at once.

Membership: every ``refresh_s`` a background task resolves the name again and probes each address with a TCP
connect of at most ``probe_timeout_s`` (that is what takes a client's subchannel out of TRANSIENT_FAILURE, and it
works the same with mutual TLS); ``self`` is always alive. The addresses are kept as gRPC prints them
(``127.0.0.1:50051``, ``[::1]:50051``) because they are the ring's hash keys (``ring.Ring``). A name that cannot be
resolved keeps the last membership (as gRPC's resolver does).

Why servers check ownership at all: gRPC routes each *new* stream, but a long-lived stream stays where it is when the
membership changes, so without this a group could end up split across two servers, each decoding part of its views.
The bound: a group is decoded by two servers at once for at most about ``refresh_s + probe_timeout_s`` (until the
old owner sees the change; DNS adds its TTL) plus the decoding of what that server had already admitted (the open
view sets it flushes and the ``decode.max_inflight_groups`` in flight). Frames decoded by both are written to the
same file name (``out/<camera>/<name>.png``, atomically), so the output holds each camera+sequence once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mvic.fusion_server.config import ClusterConfig
from mvic.fusion_server.ring import Ring

log = logging.getLogger(__name__)

Resolver = Callable[[str], Awaitable[list[str]]]
Prober = Callable[[str, float], Awaitable[bool]]


def ring_key(host: str, port: int) -> str:
    """An address as gRPC prints it (``grpc_sockaddr_to_string``): ``1.2.3.4:50051``, ``[::1]:50051``."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return f"{host}:{port}"  # a host name (only in tests that resolve nothing)
    return f"[{ip.compressed}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host without brackets, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def static_members(peers: str) -> list[str] | None:
    """The addresses of an ``ipv4:``/``ipv6:`` list, as ring keys; None for a DNS name."""
    scheme, _, rest = peers.partition(":")
    if scheme not in ("ipv4", "ipv6"):
        return None
    return [ring_key(*split_address(a)) for a in rest.lstrip("/").split(",") if a]


def dns_name(peers: str) -> tuple[str, int]:
    """``dns:///host:port``, ``dns://authority/host:port``, ``dns:host:port`` or ``host:port`` -> (host, port)."""
    rest = peers.removeprefix("dns:")
    if rest.startswith("//"):
        rest = rest[2:].partition("/")[2]
    return split_address(rest)


async def resolve(peers: str) -> list[str]:
    """Every address the name resolves to, as ring keys, in the resolver's order without repeats."""
    if (members := static_members(peers)) is not None:
        return members
    host, port = dns_name(peers)
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(ring_key(sockaddr[0], sockaddr[1]) for *_, sockaddr in infos))


async def probe(address: str, timeout_s: float) -> bool:
    """True when a TCP connect to ``address`` succeeds within ``timeout_s``."""
    host, port = split_address(address)
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True


@dataclass(frozen=True)
class View:
    """One look at the cluster: the ring over every resolved address, and those that answered."""

    ring: Ring
    alive: frozenset[str]

    def owner(self, group: str) -> str | None:
        return self.ring.owner(group.encode("utf-8"), self.alive)


class Membership:
    """The cluster as this server sees it; ``owns(group)`` is the one ownership rule."""

    def __init__(self, config: ClusterConfig, on_change: Callable[[], Awaitable[None]] | None = None, *,
                 resolver: Resolver = resolve, prober: Prober = probe):
        self.config = config
        self.self_address = ring_key(*split_address(config.self))
        self.on_change = on_change
        self._resolve, self._probe = resolver, prober
        self.view = View(Ring.build([self.self_address]), frozenset({self.self_address}))
        self._task: asyncio.Task | None = None
        self._warned_absent = False

    # ------------------------------------------------------------------------------------------- queries
    def owner(self, group: str) -> str:
        """The server that owns ``group`` now (this one when nobody else is alive)."""
        return self.view.owner(group) or self.self_address

    def owns(self, group: str) -> bool:
        return self.owner(group) == self.self_address

    @property
    def members(self) -> tuple[str, ...]:
        return self.view.ring.endpoints

    # --------------------------------------------------------------------------------------- life cycle
    async def start(self) -> None:
        """One refresh now (the first Hello is answered with a membership), then one every refresh_s."""
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="mvic-cluster")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_s)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in one refresh must not end the membership: the next one tries again
                log.exception("cluster membership refresh failed; keeping %s", ", ".join(self.members))

    async def refresh(self) -> bool:
        """Resolve and probe once; True (and ``on_change`` awaited) when the ring or the live set changed."""
        try:
            members = await asyncio.wait_for(self._resolve(self.config.peers), self.config.refresh_s * 2)
        except (OSError, TimeoutError) as exc:
            log.warning("cannot resolve cluster.peers %s (%s); keeping the last membership: %s", self.config.peers,
                        exc, ", ".join(self.members))
            return False
        if not members:
            log.warning("cluster.peers %s resolves to no address; keeping the last membership", self.config.peers)
            return False
        self._check_self(members)
        others = [m for m in members if m != self.self_address]
        answers = await asyncio.gather(*(self._probe(m, self.config.probe_timeout_s) for m in others))
        alive = frozenset(m for m, ok in zip(others, answers) if ok) | {self.self_address}
        view = View(Ring.build(members), alive & frozenset(members) | {self.self_address})
        if view.ring.endpoints == self.view.ring.endpoints and view.alive == self.view.alive:
            return False
        old, self.view = self.view, view
        log.info("cluster membership: %s (alive: %s; was %s alive of %s)", ", ".join(members),
                 ", ".join(sorted(view.alive)), len(old.alive), len(old.ring.endpoints))
        if self.on_change is not None:
            await self.on_change()
        return True

    def _check_self(self, members: list[str]) -> None:
        if self.self_address in members:
            self._warned_absent = False
        elif not self._warned_absent:
            self._warned_absent = True
            log.warning("cluster.self %s is not among the addresses cluster.peers %s resolves to (%s): no node is "
                        "routed here; set cluster.self to this server's address as the name lists it",
                        self.self_address, self.config.peers, ", ".join(members))
