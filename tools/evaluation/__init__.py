"""Evaluation tools (mvic-eval groundwork): Bjøntegaard deltas and classical codec baselines. Not for cameras."""
