"""CompressAI, imported here and nowhere else: only the modules the codec uses.

``import compressai`` runs its package ``__init__``, which imports every subpackage; the zoo, the datasets and the
transform registry pull in torchvision and torch_geometric. On a 2-core machine that is ~270 MiB of resident memory
and ~4 s of start-up for every camera process, and torch_geometric prints a FutureWarning (it calls the deprecated
``torch.jit.script``) before a command's own output. The codec needs none of it: entropy models, layers, ops, the
rANS coder and the model base class.

So, unless CompressAI is imported already, the three packages whose ``__init__`` reaches the heavy imports
(``compressai``, ``compressai.registry``, ``compressai.models``) are entered as *shells*: package modules with the
real ``__path__`` but without running their ``__init__``, so importing a submodule runs only that submodule. The
shells hold what the light submodules look up at run time (the entropy-coder choice, ``register_module``). The
first access to any other name (``compressai.zoo``'s ``from compressai.models import Cheng2020Anchor``, a user's
``compressai.set_entropy_coder``) runs the real ``__init__`` files in the shells' place (:func:`load_all`); they
reuse the submodules imported already, so every class keeps its identity.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
import warnings

#: Packages entered as shells, parents first.
SHELLS = ("compressai", "compressai.registry", "compressai.models")

_lock = threading.RLock()


def _quiet_import(name: str) -> types.ModuleType:
    """Import ``name`` with torch_geometric's import-time FutureWarning ignored (a later call still warns)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        return importlib.import_module(name)


def load_all() -> types.ModuleType:
    """Replace the shells by the real packages (their ``__init__`` run once); returns ``compressai``."""
    with _lock:
        if not getattr(sys.modules.get("compressai"), "_mvic_shell", False):
            return sys.modules["compressai"]
        for name in SHELLS:
            del sys.modules[name]
        return _quiet_import("compressai")


class _Shell(types.ModuleType):
    """A package module whose ``__init__`` has not run; a name it lacks is a submodule, or the real package's."""

    _mvic_shell = True

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        name = f"{self.__name__}.{attr}"
        if name in sys.modules or importlib.util.find_spec(name) is not None:
            return importlib.import_module(name)
        load_all()
        return getattr(importlib.import_module(self.__name__), attr)


def _enter_shell(name: str) -> _Shell:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not an installed package; run `make setup` (scripts/setup.sh)")
    shell = _Shell(name)
    shell.__spec__, shell.__file__, shell.__package__ = spec, spec.origin, name
    shell.__path__ = list(spec.submodule_search_locations)
    sys.modules[name] = shell
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, shell)
    return shell


def _light() -> None:
    """Enter the shells and give them the names the light submodules use."""
    root = _enter_shell("compressai")
    root.get_entropy_coder = lambda: "ans"  # what the real package answers until set_entropy_coder (load_all) runs
    root.available_entropy_coders = lambda: ["ans"]
    registry = _enter_shell("compressai.registry")
    registry.__dict__.update({k: v for k, v in vars(importlib.import_module("compressai.registry.torch")).items()
                              if not k.startswith("_")})
    _enter_shell("compressai.models")


with _lock:
    if "compressai" not in sys.modules:
        _light()

from compressai.ans import BufferedRansEncoder  # noqa: E402
from compressai.entropy_models import EntropyBottleneck, EntropyModel, GaussianConditional  # noqa: E402
from compressai.layers import GDN, CheckerboardMaskedConv2d, MaskedConv2d, ResidualBlock  # noqa: E402
from compressai.models.base import CompressionModel  # noqa: E402
from compressai.models.utils import conv, deconv  # noqa: E402
from compressai.ops import quantize_ste  # noqa: E402

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
    "load_all",
    "quantize_ste",
]
