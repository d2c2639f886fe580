"""MVIC fusion server: receive -> group -> joint decode (mvic.shared.codec) -> sink -> ack. Never imports mvic.node.

One frame's path, module by module:

    tls.py        mutual TLS on the gRPC port: server certificate and camera CA, re-read when they change
    peer.py       who the stream is: address and certificate identity (the URI SAN must name the Hello's camera),
                  revocations, which stream may replace a camera's open one
    admission.py  bounded admission: streams per client address, the capture-time window, cameras that keep
                  dropping (the Hello and idle deadlines are enforced by the servicer and the core)
    servicer.py   Fusion.Stream: Hello -> core.connect -> Welcome; ViewPackets -> core.receive   (the only gRPC code,
                  with status.py, where domain errors become status codes)
    cluster.py    with several servers: the live membership (resolve cluster.peers, TCP probes), which camera groups
                  this server owns; ring.py: the same ring as the nodes' gRPC ring_hash channels
    core.py       checks a packet (sequence via the ack book, size, bitstream, model), admits it, dispatches
                  ready view sets (one timestamp's views of a camera group), settles each frame once
    grouper.py    view sets by capture time (mvic.shared.view_sets); waits at most max_wait for the rest
    decoder.py    joint decoding: entropy decoding on CPU workers, then equal-shape view sets synthesized in batches
                  on the device and fused (decode.fusion); a bad view is dropped, the others decoded
    sinks.py      PNG per camera (atomic) and/or one video per camera
    acks.py       the ack book: sequence checks, camera slots, cumulative acks journalled in out/acks.json
                  (out/.servers/<self>/acks.json in a cluster) before the Ack is sent
    session.py    per-stream outbox (acks, PacketErrors, close) the servicer sends back
    live.py, webpage.py   live page: mosaic of the newest views, per-camera stats
    metrics.py    Prometheus metrics (mvic_server_*)
    app.py, cli.py        start/stop order, mvic-server command line; config.py: server.yaml
"""
