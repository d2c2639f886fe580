"""MVIC camera node: capture -> encode (mvic.shared.codec) -> send. Never imports mvic.fusion_server.

The data path, one module per hop, in the order a frame takes:

    sources.py   where images come from (synthetic scene, video file, stream, webcam, image folder)
    capture.py   schedule + timestamps, watchdog that reopens a hung or dead source
    handoff.py   bounded capture -> encode queue, policy 'latest' or 'every', counted drops
    encoder.py   CPU worker: compress_view + pack, sequence numbers
    spool.py     durable, byte-bounded store of unacked packets; resume after restarts
    link.py      one gRPC stream to the fusion server (grpc.aio, a task per direction): handshake, resend,
                 acks (only plausible ones delete anything), reconnect with backoff
    channel.py   its gRPC channel: plaintext or mutual TLS with this camera's certificate, renewed without a restart

``app.py`` starts them in order and stops them in reverse; ``cli.py`` is ``mvic-node``; ``config.py``,
``metrics.py`` and ``errors.py`` hold the settings, the Prometheus series and the node's branch of the MVICError
tree. Rules the server must agree on come from ``mvic.shared`` (ids, the Hello/Welcome records, the config dialect).
"""
