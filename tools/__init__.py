"""MVIC tools: training (mvic-train), evaluation (mvic-eval, mvic-publish), the local demo launcher (mvic-demo),
the codec command line (mvic-codec) and sample data.

Apart from what a camera or the fusion server runs: ``mvic.node``, ``mvic.fusion_server`` and ``mvic.shared`` never
import from here (tests/test_layout.py checks it).
"""
