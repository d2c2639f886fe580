"""The codec imports only the CompressAI modules it uses; the rest of CompressAI still works when asked for."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)


def test_the_codec_loads_neither_torchvision_nor_torch_geometric():
    done = _fresh("""
        import sys
        from mvic.shared.codec import model
        heavy = [m for m in ("torchvision", "torch_geometric", "compressai.zoo", "compressai.datasets")
                 if m in sys.modules]
        print("heavy:", heavy)
    """)
    assert done.returncode == 0, done.stderr
    assert "heavy: []" in done.stdout and done.stderr == ""


def test_the_rest_of_compressai_loads_on_first_use_with_the_same_classes():
    done = _fresh("""
        from mvic.shared.codec import _compressai as light
        import compressai
        from compressai.zoo import mbt2018                     # needs compressai.models' full namespace
        import compressai.entropy_models as em
        assert em.EntropyBottleneck is light.EntropyBottleneck
        assert mbt2018(1, pretrained=False).entropy_bottleneck.__class__ is light.EntropyBottleneck
        compressai.set_entropy_coder("ans")                     # a name only the real package has
        assert compressai.get_entropy_coder() == "ans" and "ans" in compressai.available_entropy_coders()
        print("ok")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_compressai_imported_first_is_used_as_it_is():
    done = _fresh("""
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import compressai
        from mvic.shared.codec import _compressai as light
        import sys
        assert sys.modules["compressai"] is compressai and not getattr(compressai, "_mvic_shell", False)
        assert light.load_all() is compressai
        print("ok")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
