"""Whether a decoder can decode what an encoder coded: the one model/weights compatibility rule.

A view can be decoded only with the architecture (``model_id``, from ``mvic.shared.model_table``) and the weights
(``weights_hash``, the first 8 bytes of the weights file's sha256) it was coded with: any other pair decodes garbage
or desynchronises. Every side that compares the two asks here, never re-types the rule:

* ``LDMIC.decompress`` / ``entropy_decode`` / ``synthesize`` (a view's header against the loaded model), raising
  ``ModelMismatchError``;
* the fusion server (``fusion_server.decoder.GroupDecoder``): a node's Hello before its stream is accepted
  (-> ``IncompatibleNodeError``) and each packet's header (-> ``PacketModelMismatchError``); ``status.py`` maps both
  to FAILED_PRECONDITION;
* the node's spool after a restart (``node.encoder.compatibility_check``): packets coded by an earlier model are
  dropped, the reason logged.

``incompatibility`` returns the message (None when compatible), ``check_compatible`` raises it as a
``ModelMismatchError``. The message names both sides and says what to do. No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mvic.shared.errors import ModelMismatchError
from mvic.shared.model_table import MODELS_BY_ID, ModelSpec


class _Identified(Protocol):
    model_id: int
    weights_hash: bytes


@dataclass(frozen=True)
class CodecIdentity:
    """What an encoder and a decoder must share: the architecture and the weights."""

    model_id: int
    weights_hash: bytes  # first 8 bytes of the weights file's sha256

    @classmethod
    def of(cls, source: _Identified) -> CodecIdentity:
        """The identity a ``ViewHeader`` or a ``Hello`` declares (both carry ``model_id`` and ``weights_hash``)."""
        return cls(source.model_id, bytes(source.weights_hash))

    @property
    def spec(self) -> ModelSpec | None:
        """The architecture, or None for an id this build does not know."""
        return MODELS_BY_ID.get(self.model_id)

    def __str__(self) -> str:
        spec = self.spec
        model = f"model {spec.name!r} (id {self.model_id:#06x})" if spec else f"unknown model id {self.model_id:#06x}"
        return f"{model}, weights {self.weights_hash.hex()}"


def incompatibility(coded: CodecIdentity, local: CodecIdentity, *, coded_by: str, decoded_by: str) -> str | None:
    """Why ``decoded_by``, holding ``local``, cannot decode what ``coded_by`` coded with ``coded``; None if it can.

    ``coded_by`` names the coded side ("view C1#7", "camera C1"), ``decoded_by`` the holder ("this server").
    """
    if coded == local:
        return None
    both = f"{coded_by} was coded with {coded}, but {decoded_by} holds {local}"
    if coded.spec is None:
        return f"{both}; this build of MVIC does not know model id {coded.model_id:#06x}: upgrade MVIC on {decoded_by}"
    if coded.model_id != local.model_id:
        return (f"{both}; code and decode with one model and its weights file on both ends (--model {coded.spec.name} "
                f"or --model {local.spec.name}; mvic-codec info FILE shows the model and weights of a .mvic file)")
    return (f"{both}: the same model with other weights; load the same weights file on both ends ({decoded_by}'s "
            f"weights have sha256 prefix {local.weights_hash.hex()}; mvic-codec info FILE shows a .mvic file's)")


def check_compatible(coded: CodecIdentity, local: CodecIdentity, *, coded_by: str, decoded_by: str) -> None:
    """Return when ``local`` decodes what was coded with ``coded``; otherwise raise ModelMismatchError."""
    why = incompatibility(coded, local, coded_by=coded_by, decoded_by=decoded_by)
    if why is not None:
        raise ModelMismatchError(why)
