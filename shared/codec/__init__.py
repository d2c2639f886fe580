"""The LDMIC codec: per-view encoder, exact entropy model, joint decoder, weights registry.

Public API::

    model = load_model("weights.safetensors")                  # or load_model(default_weights("ldmic-fast"))
    view = model.compress_view(image, rate_index, camera_id="C1", sequence=n, capture_ns=t)   # on a camera
    data = mvic.shared.bitstream.pack(view)                     # bytes for the wire or a .mvic file
    decoded = model.decompress([unpack(d) for d in group])      # on the server, any K >= 1 views
"""

from mvic.shared.codec.model import LDMIC, DecodedView, RDOutput
from mvic.shared.codec.registry import WeightsRecord, default_weights, export_weights, load_model

__all__ = ["LDMIC", "DecodedView", "RDOutput", "WeightsRecord", "default_weights", "export_weights", "load_model"]
