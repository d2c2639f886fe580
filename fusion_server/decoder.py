"""Joint decoding of groups, in two stages: group -> **entropy decode (CPU) -> batched synthesis (device)** -> sink.

Hop before: the grouper emits a ``ViewSet`` (one timestamp's views, one per camera); the core submits it here.
Hop after: the sink stage (``sinks.FrameSinks``) writes the ``DecodeResult``'s frames; the core then acknowledges.

``DecodePipeline`` runs the stages:

1. entropy decoding (rANS + the exact integer networks, ``LDMIC.entropy_decode``) of each group on one of
   ``decode.workers`` CPU threads, with a CPU copy of the model when the decode device is a GPU (the exact path
   gives the same symbols on every device). A view whose entropy decoding desynchronises is dropped and the others
   are decoded again jointly; any other failure of a joint decode falls back to decoding each view alone.
2. one device stage that takes the groups whose entropy decoding finished and synthesizes up to
   ``decode.max_batch`` groups of one shape (views, padded size) in one ``LDMIC.synthesize`` call, in
   ``decode.precision`` (auto: bf16 channels-last on a CPU with native bf16, 3-4x faster there for under 0.1 dB;
   float32 elsewhere; ``mvic.shared.codec.fast_synthesis``), then the view fusion of each set on the host
   (``decode.fusion``, ``mvic.shared.codec.view_fusion``). It never waits for a batch to fill: what is ready
   when the device is free goes together. A failed batch is retried group by group, then view by view, so one bad
   view never costs the others their reconstruction.

Both stages take their work in fair order (``fair_queue.FairQueue``: owners are the cameras of a group or part,
costs its pixels), so one camera's expensive views cannot hold back the others' acks. A view reaches them only within
the server's limits: the core refuses a view over ``limits.max_view_pixels`` or whose stream is shorter than any
stream of its size (``GroupDecoder.check_stream``), and ``decode_units`` cuts a view set into the parts decoded on
their own: one per padded size, of at most ``limits.max_set_pixels`` each.

Both models are read-only after loading, so the threads share them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import torch

from mvic.fusion_server.errors import (
    DecodeFailedError,
    IncompatibleNodeError,
    MalformedPacketError,
    PacketModelMismatchError,
    PacketRejected,
)
from mvic.fusion_server.fair_queue import FairQueue
from mvic.fusion_server.metrics import ServerMetrics
from mvic.fusion_server.records import DecodedFrame, DecodeResult, FailedView, ReceivedView, ViewSet
from mvic.shared.bitstream import FORMAT_VERSION, ViewBitstream, ViewHeader
from mvic.shared.codec.compat import CodecIdentity, check_compatible
from mvic.shared.codec.fast_synthesis import synthesis_precision
from mvic.shared.codec.model import LDMIC, GroupLatents
from mvic.shared.codec.transforms import Precision
from mvic.shared.codec.view_fusion import FusionOptions
from mvic.shared.errors import BitstreamError, CorruptBitstreamError, DesyncError, ModelMismatchError, MVICError
from mvic.shared.rpc.hello import Hello

log = logging.getLogger(__name__)

Failed = FailedView

_DEVICE_ERRORS = tuple(t for t in (torch.cuda.OutOfMemoryError, getattr(torch, "AcceleratorError", None)) if t)
_DEVICE_WORDS = ("CUDA", "cuDNN", "CUDNN", "CUBLAS", "cuBLAS", "NCCL", "device-side assert")


class DeviceFaultError(RuntimeError):
    """Synthesis failed because of the device, not the views: they are synthesized again, never rejected."""


def is_device_fault(exc: BaseException) -> bool:
    """Out of device memory, or an error of CUDA or its libraries (which can leave the CUDA context unusable)."""
    if isinstance(exc, _DEVICE_ERRORS):
        return True
    return isinstance(exc, RuntimeError) and any(word in str(exc) for word in _DEVICE_WORDS)


@dataclass(frozen=True)
class ViewLatents:
    """Views of one group and one padded size after entropy decoding: one unit of the device stage."""

    views: tuple[ReceivedView, ...]
    latents: GroupLatents  # rows in the order of ``views``


@dataclass(frozen=True)
class EntropyDecoded:
    """A group after the CPU stage: one ``ViewLatents`` per padded size, and the views that failed for good."""

    view_set: ViewSet
    parts: tuple[ViewLatents, ...]
    failed: tuple[Failed, ...]
    seconds: float


@dataclass(frozen=True)
class Synthesized:
    frames: tuple[DecodedFrame, ...]
    failed: tuple[Failed, ...]


def resolve_device(requested: str) -> str:
    """'auto' -> cuda:0 when CUDA is present, else cpu; a CUDA device that is absent falls back to cpu (logged)."""
    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        index = int(requested.split(":")[1]) if ":" in requested else 0
        if not torch.cuda.is_available():
            log.warning("device %s requested but CUDA is not available here: decoding on the CPU", requested)
            return "cpu"
        if index >= torch.cuda.device_count():
            log.warning("device %s requested but only %d CUDA device(s) exist: decoding on the CPU",
                        requested, torch.cuda.device_count())
            return "cpu"
        return f"cuda:{index}"
    return "cpu"


def decode_units(view_set: ViewSet, max_pixels: int) -> list[ViewSet]:
    """The parts of a view set that are decoded, written and acknowledged on their own (the view set itself when it is
    one part): its views of one padded size, which the codec decodes apart from other sizes anyway, and of those at
    most ``max_pixels`` padded pixels (``limits.max_set_pixels``) in one part, each part decoded jointly. Parts hold
    views in camera order, and a size's views are shared out evenly among its parts."""
    by_size: dict[tuple[int, int], list[ReceivedView]] = {}
    for view in view_set.views:
        by_size.setdefault(view.bitstream.header.padded_size, []).append(view)
    parts: list[list[ReceivedView]] = []
    for (hp, wp), views in by_size.items():
        per_part = max(1, max_pixels // (hp * wp))
        count = -(-len(views) // per_part)  # ceil
        parts += [views[i * len(views) // count: (i + 1) * len(views) // count] for i in range(count)]
    if len(parts) == 1:
        return [view_set]
    return [replace(view_set, views=tuple(part)) for part in parts]


def _pixels(views: Sequence[ReceivedView]) -> int:
    """Padded pixels: what decoding the views costs, in time and memory."""
    return sum(h * w for h, w in (v.bitstream.header.padded_size for v in views))


class GroupDecoder:
    """The loaded models plus the checks a node and its packets must pass before a view may join a group.

    ``model`` synthesizes on its device; ``entropy_model`` (default: ``model``) entropy-decodes, a CPU copy of the
    same weights when ``model`` is on a GPU. Whether a node's model and weights fit is the codec's one rule
    (``mvic.shared.codec.compat``); here its ModelMismatchError becomes the server's error for a Hello
    (IncompatibleNodeError, the stream ends) or for a packet (PacketModelMismatchError, the packet is dropped).

    ``precision``: of the synthesis (``decode.precision``), resolved for the synthesis device at each call, so
    ``auto`` becomes bf16 when a device fault moves synthesis to the CPU. ``entropy_threads``: threads sharing one
    group's views in entropy decoding (``LDMIC.entropy_decode``); the same integers whatever it is. ``fusion``: the
    view fusion after synthesis (``decode.fusion``; ``mvic.shared.codec.view_fusion``).
    """

    def __init__(self, model: LDMIC, entropy_model: LDMIC | None = None, *,
                 precision: Precision | str = Precision.FP32, entropy_threads: int = 1,
                 fusion: FusionOptions = FusionOptions()):
        if model.weights_hash is None:
            raise ValueError("the model has no weights hash; load it with mvic.shared.codec.registry.load_model")
        entropy_model = entropy_model or model
        if entropy_model.identity != model.identity:
            raise ValueError("the entropy-decoding model must be a copy of the synthesis model (same weights file)")
        self.model = model
        self.entropy_model = entropy_model
        self.precision = Precision(precision)
        self.entropy_threads = max(1, entropy_threads)
        self.fusion = fusion
        self.identity: CodecIdentity = model.identity
        self.model_name = model.spec.name
        self.format_version = FORMAT_VERSION
        self._floor = entropy_model.latent_codec.stream_floor()  # both models have the same tables

    @property
    def device(self) -> str:
        return str(self.model.gains.y_inverse.device)

    @property
    def synthesis_precision(self) -> Precision:
        """FP32 or BF16: what ``precision`` is on the device that synthesizes now."""
        return synthesis_precision(self.precision, self.device)

    def fall_back_to_cpu(self) -> bool:
        """Synthesize with the CPU copy from now on (after a device fault); False when there is none to go to."""
        if self.entropy_model is self.model:
            return False
        self.model = self.entropy_model
        return True

    def check_node(self, hello: Hello) -> None:
        """Raise IncompatibleNodeError when the node codes with another model or other weights than this server."""
        try:
            check_compatible(CodecIdentity.of(hello), self.identity, coded_by=f"camera {hello.camera_id}",
                             decoded_by="this server")
        except ModelMismatchError as exc:
            raise IncompatibleNodeError(str(exc)) from None

    def check_header(self, header: ViewHeader) -> None:
        """Raise a PacketRejected when this server can never decode the view (the codec's own header check)."""
        try:
            self.model.check_header(header, decoded_by="this server")
        except ModelMismatchError as exc:
            raise PacketModelMismatchError(header.sequence, str(exc)) from None
        except CorruptBitstreamError as exc:
            raise MalformedPacketError(header.sequence, str(exc)) from None

    def check_stream(self, view: ViewBitstream) -> None:
        """Raise MalformedPacketError when the view carries less entropy-coded data than any stream of its size
        (``LDMIC.min_stream_bytes``): such a view is damaged or forged, and decoding it would cost what its declared
        size costs, not what its bytes pay for (issue 13: 69 bytes declaring 16384x16384)."""
        h = view.header
        need = self.entropy_model.min_stream_bytes(h.padded_size, self._floor)
        if view.payload_bytes < need:
            raise MalformedPacketError(
                h.sequence, f"view {h.camera_id}#{h.sequence} declares a {h.width}x{h.height} image in "
                f"{view.payload_bytes} bytes of entropy-coded data, but every stream of that size takes at least "
                f"{need} bytes with model {self.model_name!r}: the packet is damaged or forged, and is dropped")

    def decode(self, group: ViewSet) -> DecodeResult:
        """Both stages for one group, on the calling thread (tools and tests; the server uses DecodePipeline)."""
        entropy = self.entropy_decode(group)
        start = time.perf_counter()
        done = self.synthesize(entropy.parts)
        seconds = entropy.seconds + time.perf_counter() - start
        failed = [*entropy.failed, *(x for s in done for x in s.failed)]
        return _result(group, [f for s in done for f in s.frames], failed, seconds)

    # --------------------------------------------------------------------------------- stage 1: CPU worker
    def entropy_decode(self, group: ViewSet) -> EntropyDecoded:
        """Entropy-decode a group's views jointly, per padded size; views that cannot be decoded come back failed."""
        start = time.perf_counter()
        by_size: dict[tuple[int, int], list[ReceivedView]] = {}
        for view in group.views:
            by_size.setdefault(view.bitstream.header.padded_size, []).append(view)
        parts: list[ViewLatents] = []
        failed: list[Failed] = []
        for views in by_size.values():
            more, lost = self._entropy_decode(views)
            parts += more
            failed += lost
        return EntropyDecoded(group, tuple(parts), tuple(failed), time.perf_counter() - start)

    def _entropy_decode(self, views: list[ReceivedView]) -> tuple[list[ViewLatents], list[Failed]]:
        pending, failed = list(views), []
        while pending:
            try:
                latents = self.entropy_model.entropy_decode([v.bitstream for v in pending],
                                                            threads=self.entropy_threads)
            except DesyncError as exc:
                bad = set(exc.failed) or set(range(len(pending)))
                failed += [(pending[i], DecodeFailedError(pending[i].sequence, str(exc))) for i in sorted(bad)]
                pending = [v for i, v in enumerate(pending) if i not in bad]
                continue
            except (MVICError, RuntimeError, ValueError) as exc:
                if len(pending) == 1:
                    return [], failed + [(pending[0], _as_rejection(pending[0], exc))]
                log.warning("joint decode of %s failed (%s); decoding each view alone", _names(pending), exc)
                parts = []
                for view in pending:
                    more, lost = self._entropy_decode([view])
                    parts += more
                    failed += lost
                return parts, failed
            return [ViewLatents(tuple(pending), latents)], failed
        return [], failed

    # ------------------------------------------------------------------------------ stage 2: device thread
    def synthesize(self, parts: Sequence[ViewLatents]) -> list[Synthesized]:
        """Synthesize several groups' latents in one call (batched by shape); one Synthesized per part, in order.

        A failed batch is retried part by part, a failed joint part view by view; a view that fails alone is
        rejected. A device fault (``is_device_fault``) of a single part raises DeviceFaultError instead."""
        if not parts:
            return []
        try:
            decoded = self.model.synthesize([p.latents for p in parts], self.synthesis_precision, self.fusion)
        except (MVICError, RuntimeError, ValueError) as exc:
            if len(parts) > 1:
                log.warning("batched synthesis of %d groups failed (%s); synthesizing each alone", len(parts), exc)
                if isinstance(exc, torch.cuda.OutOfMemoryError):
                    torch.cuda.empty_cache()
                return [self.synthesize([p])[0] for p in parts]
            if is_device_fault(exc):  # not the views' fault: DecodePipeline moves to the CPU and tries again
                raise DeviceFaultError(f"synthesis on {self.device} failed: {exc}") from exc
            part = parts[0]
            if len(part.views) == 1:
                return [Synthesized((), ((part.views[0], _as_rejection(part.views[0], exc)),))]
            log.warning("joint synthesis of %s failed (%s); synthesizing each view alone", _names(part.views), exc)
            alone = [self.synthesize([ViewLatents((v,), part.latents.select([i]))])[0]
                     for i, v in enumerate(part.views)]
            return [Synthesized(tuple(f for s in alone for f in s.frames), tuple(x for s in alone for x in s.failed))]
        return [Synthesized(tuple(DecodedFrame(v, d.image) for v, d in zip(p.views, views)), ())
                for p, views in zip(parts, decoded)]


@dataclass(eq=False)
class _Job:
    """One group between submit and its DecodeResult; lives on the event loop only."""

    entropy: EntropyDecoded
    future: asyncio.Future[DecodeResult]
    remaining: int
    frames: list[DecodedFrame] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, done: Synthesized, seconds: float) -> None:
        self.frames += done.frames
        self.failed += done.failed
        self.seconds += seconds
        self.remaining -= 1
        if self.remaining <= 0 and not self.future.done():
            e = self.entropy
            self.future.set_result(_result(e.view_set, self.frames, [*e.failed, *self.failed],
                                           e.seconds + self.seconds))


class DecodePipeline:
    """Entropy decoding on ``workers`` CPU threads, then one device thread that synthesizes batches of groups.

    ``submit`` is called on the event loop and returns a future of the group's DecodeResult; the device stage runs
    as a task on the same loop (``start`` / ``stop``), so the queues need no lock. Both stages take their next work
    from a ``FairQueue`` (owner: the cameras; cost: padded pixels), not in arrival order.
    """

    def __init__(self, decoder: GroupDecoder, metrics: ServerMetrics, *, workers: int, max_batch: int,
                 on_device_fault: Callable[[str], None] | None = None):
        self.decoder = decoder
        self.on_device_fault = on_device_fault
        self.metrics = metrics
        self.max_batch = max_batch
        self.workers = workers
        self._entropy_pool = ThreadPoolExecutor(workers, thread_name_prefix="mvic-entropy")
        self._device_pool = ThreadPoolExecutor(1, thread_name_prefix="mvic-synthesis")
        self._waiting: FairQueue[tuple[ViewSet, asyncio.Future[DecodeResult]]] = FairQueue()  # for a CPU worker
        self._running = 0  # groups on the CPU workers
        self._pending: FairQueue[tuple[_Job, ViewLatents]] = FairQueue()  # entropy-decoded, for the device
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._device_loop(), name="mvic-synthesis")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for _, future in self._waiting.drain():
            future.cancel()
        self._entropy_pool.shutdown(wait=True, cancel_futures=True)
        self._device_pool.shutdown(wait=True)

    def submit(self, group: ViewSet) -> asyncio.Future[DecodeResult]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[DecodeResult] = loop.create_future()
        self._waiting.push(group.cameras, _pixels(group.views), (group, future))
        self._start_entropy(loop)
        return future

    def _start_entropy(self, loop: asyncio.AbstractEventLoop) -> None:
        """Give free CPU workers the next groups, in fair order."""
        while self._running < self.workers and self._waiting:
            group, future = self._waiting.pop()
            if future.done():  # cancelled while waiting
                continue
            self._running += 1
            work = self._entropy_pool.submit(self.decoder.entropy_decode, group)
            work.add_done_callback(lambda w, f=future: loop.call_soon_threadsafe(self._entropy_done, w, f, loop))

    def _entropy_done(self, work: Future[EntropyDecoded], future: asyncio.Future[DecodeResult],
                      loop: asyncio.AbstractEventLoop) -> None:
        self._running -= 1
        self._start_entropy(loop)
        if future.done():
            return
        if work.cancelled():  # the pipeline is stopping
            future.cancel()
            return
        if work.exception() is not None:
            future.set_exception(work.exception())
            return
        entropy = work.result()
        self.metrics.decode_seconds.labels("entropy").observe(entropy.seconds)
        job = _Job(entropy, future, len(entropy.parts))
        if not entropy.parts:
            job.add(Synthesized((), ()), 0.0)  # every view failed: nothing for the device
            return
        for part in entropy.parts:
            self._pending.push(tuple(v.camera_id for v in part.views), _pixels(part.views), (job, part))
        self._wakeup.set()

    def _device_fault(self, exc: DeviceFaultError) -> bool:
        """Count it, move synthesis to the CPU copy and tell the server; False when there is no CPU copy."""
        self.metrics.device_faults.inc()
        device = self.decoder.device
        moved = self.decoder.fall_back_to_cpu()
        reason = (f"{exc}; synthesis moved from {device} to the CPU (slower) and the groups in flight are decoded "
                  f"again there; restart the server to use the GPU again" if moved else str(exc))
        log.error("device fault: %s", reason)
        if self.on_device_fault is not None:
            self.on_device_fault(reason)
        return moved

    def _next_batch(self) -> list[tuple[_Job, ViewLatents]]:
        """The next ready part in fair order and up to max_batch - 1 of the following ones of its shape."""
        return self._pending.pop_batch(self.max_batch, lambda item: item[1].latents.shape)

    async def _device_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._next_batch()
            start = time.perf_counter()
            try:
                done = await loop.run_in_executor(self._device_pool, self.decoder.synthesize, [p for _, p in batch])
            except DeviceFaultError as exc:
                if self._device_fault(exc):
                    self._pending.put_back(batch)  # the same groups again, first, on the CPU
                    continue
                done = _all_failed(batch, exc)
            except Exception as exc:  # a bug, not a bad view: fail these groups' views, keep serving the others
                log.exception("synthesis of %d group(s) failed", len(batch))
                done = _all_failed(batch, exc)
            seconds = time.perf_counter() - start
            self.metrics.decode_seconds.labels("synthesis").observe(seconds)
            self.metrics.decode_batch.observe(len(batch))
            for (job, _), result in zip(batch, done):
                job.add(result, seconds)


def _all_failed(batch: list[tuple[_Job, ViewLatents]], exc: Exception) -> list[Synthesized]:
    """Every view of a batch that could not be synthesized at all, rejected with the error."""
    return [Synthesized((), tuple((v, DecodeFailedError(v.sequence, f"decoder error: {exc}")) for v in part.views))
            for _, part in batch]


def _result(group: ViewSet, frames: list[DecodedFrame], failed: list[Failed], seconds: float) -> DecodeResult:
    frames = sorted(frames, key=lambda f: f.source.camera_id)
    return DecodeResult(group, tuple(frames), tuple(FailedView(*f) for f in failed), seconds)


def _as_rejection(view: ReceivedView, exc: Exception) -> PacketRejected:
    message = f"view {view.camera_id}#{view.sequence} could not be decoded: {exc}"
    if isinstance(exc, ModelMismatchError):
        return PacketModelMismatchError(view.sequence, message)
    if isinstance(exc, BitstreamError) and not isinstance(exc, DesyncError):
        return MalformedPacketError(view.sequence, message)
    return DecodeFailedError(view.sequence, message)


def _names(views: Sequence[ReceivedView]) -> str:
    return ", ".join(f"{v.camera_id}#{v.sequence}" for v in views)
