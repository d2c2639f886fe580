"""The LDMIC codec: per-view encoder, exact entropy model, joint decoder, weights registry.

Public API::

    model = load_model("weights.safetensors")                  # or load_model(default_weights("ldmic-fast-lite"))
    view = model.compress_view(image, rate_index, camera_id="C1", sequence=n, capture_ns=t)   # on a camera
    data = mvic.shared.bitstream.pack(view)                     # bytes for the wire or a .mvic file
    decoded = model.decompress([unpack(d) for d in group])      # on the server, any K >= 1 views

The names below are imported on first use: importing a light module of this package (``compat``, ``grouping``,
``registry`` for its records) loads neither torch nor CompressAI, so tools that need no model start fast.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "LDMIC": "model",
    "DecodedView": "records",
    "FusionOptions": "view_fusion",
    "NO_FUSION": "view_fusion",
    "RDOutput": "records",
    "WeightsRecord": "registry",
    "default_weights": "registry",
    "export_weights": "registry",
    "load_model": "registry",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
