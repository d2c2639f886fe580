"""The encoder worker: code each frame on the CPU and spool it. Third hop of the data path.

Hop before: ``mvic.node.handoff.FrameHandoff`` (frames from capture, under the latest/every policy).
Hop after: ``mvic.node.spool.Spool`` (durable until acked), then ``mvic.node.link.Link`` sends it.

One worker thread per node. Torch's intra-op threads are set explicitly (``encode.threads``) by
``configure_torch`` before the worker starts, so a camera box is not oversubscribed; the convolutions release the
GIL, so capture and the link keep running while a frame is coded. Each frame gets the next sequence number from the
spool *before* coding, because the sequence is part of the bitstream header (``ViewPacket.sequence`` equals it).

``encode.precision`` picks the arithmetic of the analysis transforms (``mvic.shared.codec.transforms.Precision``):
``auto`` runs them in bf16 on CPUs with native bf16 (AMX, AVX512-BF16) and in float32 elsewhere (ARM, AVX2). The
entropy model after them is exact integer arithmetic whatever it is, so the server decodes every choice alike.
"""

from __future__ import annotations

import logging
import threading
import time

import torch

from mvic.node.config import EncodeConfig
from mvic.node.handoff import Frame, FrameHandoff
from mvic.node.metrics import NodeMetrics
from mvic.node.spool import Spool
from mvic.shared.bitstream import ViewHeader, pack
from mvic.shared.codec.compat import CodecIdentity, incompatibility
from mvic.shared.codec.model import LDMIC
from mvic.shared.codec.registry import load_model, weights_source
from mvic.shared.codec.transforms import Precision, resolve_precision
from mvic.shared.errors import ConfigError, MVICError
from mvic.shared.model_table import DEFAULT_MODEL

log = logging.getLogger(__name__)


def configure_torch(threads: int) -> None:
    """Pin torch's CPU thread pools (process-wide) for the encoder."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first parallel op; already fixed then
        pass


def load_encoder(config: EncodeConfig) -> LDMIC:
    """The model to code with: ``config.weights`` (checked against ``config.model`` when one is named), or the
    installed weights of ``config.model`` (default ldmic-fast-lite; NoTrainedWeightsError says what to do). An
    unknown model name is a ConfigError."""
    return load_model(weights_source(config.weights, config.model or DEFAULT_MODEL), model=config.model or None)


def compatibility_check(model: LDMIC):
    """A predicate for ``Spool(keep=...)``: why a spooled packet coded by another model must be dropped, or None.

    The rule is the codec's (``mvic.shared.codec.compat``): the server decodes what this node's model decodes.
    """
    identity = model.identity

    def why_not(header: ViewHeader) -> str | None:
        return incompatibility(CodecIdentity.of(header), identity, coded_by=f"spooled packet #{header.sequence}",
                               decoded_by="this node")

    return why_not


class EncoderWorker:
    """Takes frames from the handoff until it is finished (or ``stop`` is set and it is empty); codes and spools."""

    def __init__(self, model: LDMIC, handoff: FrameHandoff, spool: Spool, camera: str, rate_index: int,
                 metrics: NodeMetrics, stop: threading.Event, *, precision: Precision | str = Precision.AUTO):
        if not 0 <= rate_index < model.spec.num_rates:
            raise ConfigError(f"encode.rate: {rate_index} is outside the rate indexes 0..{model.spec.num_rates - 1} of "
                              f"{model.spec.name}; pick one of them")
        self.model = model
        self.handoff = handoff
        self.spool = spool
        self.camera = camera
        self.rate_index = rate_index
        self.metrics = metrics
        self.stop = stop
        self.precision = resolve_precision(precision)
        log.info("analysis transforms in %s (encode.precision %s)", self.precision.value, Precision(precision).value)

    def run(self) -> None:
        while True:
            frame = self.handoff.get(timeout=0.1)
            if frame is None:
                if self.handoff.finished or (self.stop.is_set() and len(self.handoff) == 0):
                    return
                continue
            self.encode(frame)

    def encode(self, frame: Frame) -> bool:
        """Code one frame and spool it; False when it was dropped (codec refused it, or no spool room)."""
        sequence = self.spool.next_sequence()
        started = time.perf_counter()
        try:
            view = self.model.compress_view(frame.image, self.rate_index, camera_id=self.camera, sequence=sequence,
                                            capture_ns=frame.capture_ns, precision=self.precision)
            data = pack(view)
        except MVICError as exc:
            self.metrics.dropped("encode_error")
            log.error("frame %d (sequence %d) could not be coded and is dropped: %s", frame.index, sequence, exc)
            return False
        elapsed = time.perf_counter() - started
        self.metrics.encode_seconds.observe(elapsed)
        if not self.spool.put(sequence, frame.capture_ns, data, self.stop):
            return False
        self.metrics.frames_encoded.inc()
        log.debug("frame %d -> sequence %d, %d bytes in %.3f s", frame.index, sequence, len(data), elapsed)
        return True
