"""CompressAI, imported here and nowhere else, without its import-time warning.

``import compressai`` imports all its subpackages and, through them, torch_geometric, which calls the deprecated
``torch.jit.script`` while it is imported: every command would print that FutureWarning before its own output. The
warning is ignored for the duration of this import only (a later ``torch.jit.script`` call warns as usual); every
other warning is left alone. Codec modules take the CompressAI names they build on from here.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    import compressai  # noqa: F401  (imports every subpackage: the lines below only bind names)

from compressai.ans import BufferedRansEncoder
from compressai.entropy_models import EntropyBottleneck, EntropyModel, GaussianConditional
from compressai.layers import GDN, CheckerboardMaskedConv2d, MaskedConv2d, ResidualBlock
from compressai.models import CompressionModel
from compressai.models.utils import conv, deconv
from compressai.ops import quantize_ste

__all__ = [
    "BufferedRansEncoder",
    "CheckerboardMaskedConv2d",
    "CompressionModel",
    "EntropyBottleneck",
    "EntropyModel",
    "GDN",
    "GaussianConditional",
    "MaskedConv2d",
    "ResidualBlock",
    "conv",
    "deconv",
    "quantize_ste",
]
