"""Training tools (mvic-train): data sources of view groups, the rate-distortion loss, the training loop.

Never imported by mvic.node or the codec: a camera needs none of this.
"""
