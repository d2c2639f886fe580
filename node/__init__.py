"""MVIC camera node: capture -> encode (mvic.shared.codec) -> send. Never imports mvic.fusion_server."""
