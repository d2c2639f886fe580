"""Joint decoding of one group: group -> **joint decode** -> sink.

Hop before: the grouper emits a ``ViewGroup`` (views of one timestamp, one per camera).
Hop after: the sink stage (``sinks.FrameSinks``) writes the ``GroupResult``'s frames; the core then acknowledges.

``GroupDecoder.decode`` runs on a worker thread of the core's decode pool, several groups at a time: entropy decoding
(rANS, CPU) of one group overlaps the synthesis of another on the device. The model is read-only after loading, so
the threads share it. A view whose entropy decoding desynchronises is dropped and the others are decoded again
jointly; any other failure of a joint decode falls back to decoding each view alone, so one bad view never costs
the others their reconstruction.
"""

from __future__ import annotations

import logging
import time

import torch

from mvic.fusion_server.errors import (
    DecodeFailedError,
    MalformedPacketError,
    PacketModelMismatchError,
    PacketRejected,
)
from mvic.fusion_server.records import DecodedFrame, GroupResult, ReceivedView, ViewGroup
from mvic.shared.bitstream import FORMAT_VERSION, ViewHeader
from mvic.shared.codec.model import LDMIC
from mvic.shared.errors import BitstreamError, DesyncError, MVICError
from mvic.shared.model_table import MODELS_BY_ID

log = logging.getLogger(__name__)


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


class GroupDecoder:
    """The loaded model plus the checks a packet must pass before it may join a group."""

    def __init__(self, model: LDMIC):
        if model.weights_hash is None:
            raise ValueError("the model has no weights hash; load it with mvic.shared.codec.registry.load_model")
        self.model = model
        self.model_id = model.spec.model_id
        self.model_name = model.spec.name
        self.weights_hash: bytes = model.weights_hash
        self.format_version = FORMAT_VERSION

    def check_header(self, header: ViewHeader) -> None:
        """Raise a PacketRejected when this server can never decode the view."""
        if header.model_id != self.model_id or header.weights_hash != self.weights_hash:
            other = MODELS_BY_ID.get(header.model_id)
            raise PacketModelMismatchError(
                header.sequence,
                f"view {header.camera_id}#{header.sequence} was coded with model "
                f"{other.name if other else hex(header.model_id)} weights {header.weights_hash.hex()}, this server "
                f"decodes {self.model_name} weights {self.weights_hash.hex()}; run the node with the server's weights",
            )
        if header.rate_index >= self.model.spec.num_rates:
            raise MalformedPacketError(
                header.sequence,
                f"view {header.camera_id}#{header.sequence} asks for rate point {header.rate_index}; "
                f"{self.model_name} has {self.model.spec.num_rates} (0..{self.model.spec.num_rates - 1})",
            )

    def decode(self, group: ViewGroup) -> GroupResult:
        """Decode a group jointly; views that cannot be decoded come back in ``failed``."""
        start = time.perf_counter()
        pending = list(group.views)
        failed: list[tuple[ReceivedView, PacketRejected]] = []
        frames: list[DecodedFrame] = []
        while pending:
            try:
                decoded = self.model.decompress([v.view for v in pending])
            except DesyncError as exc:
                bad = set(exc.failed) or set(range(len(pending)))
                failed += [(pending[i], DecodeFailedError(pending[i].sequence, str(exc))) for i in sorted(bad)]
                pending = [v for i, v in enumerate(pending) if i not in bad]
                continue
            except (MVICError, RuntimeError, ValueError) as exc:
                if len(pending) == 1:
                    failed.append((pending[0], _as_rejection(pending[0], exc)))
                    break
                log.warning("joint decode of %s failed (%s); decoding each view alone", _names(pending), exc)
                for view in pending:
                    frames_one, failed_one = self._decode_alone(view)
                    frames += frames_one
                    failed += failed_one
                break
            frames += [DecodedFrame(v, d.image) for v, d in zip(pending, decoded)]
            break
        frames.sort(key=lambda f: f.source.camera_id)
        return GroupResult(group, tuple(frames), tuple(failed), time.perf_counter() - start)

    def _decode_alone(self, view: ReceivedView) -> tuple[list[DecodedFrame], list[tuple[ReceivedView, PacketRejected]]]:
        try:
            return [DecodedFrame(view, self.model.decompress([view.view])[0].image)], []
        except (MVICError, RuntimeError, ValueError) as exc:
            return [], [(view, _as_rejection(view, exc))]


def _as_rejection(view: ReceivedView, exc: Exception) -> PacketRejected:
    message = f"view {view.camera_id}#{view.sequence} could not be decoded: {exc}"
    if isinstance(exc, BitstreamError) and not isinstance(exc, DesyncError):
        return MalformedPacketError(view.sequence, message)
    return DecodeFailedError(view.sequence, message)


def _names(views: list[ReceivedView]) -> str:
    return ", ".join(f"{v.camera_id}#{v.sequence}" for v in views)
