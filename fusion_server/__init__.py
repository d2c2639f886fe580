"""MVIC fusion server: receive -> group -> joint decode (mvic.shared.codec) -> sink. Never imports mvic.node."""
