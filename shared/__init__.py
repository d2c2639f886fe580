"""MVIC shared code: the codec (models, entropy coding, bitstream), errors, and what node and server both need.

Neither ``mvic.node`` nor ``mvic.fusion_server`` is imported from here; both import from here.
"""
