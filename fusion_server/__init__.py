"""MVIC fusion server: receive -> group -> joint decode (mvic.shared.codec) -> sink. Never imports mvic.node.

One frame's path, module by module:

    servicer.py   Fusion.Stream: Hello -> core.connect -> Welcome; ViewPackets -> core.receive   (the only gRPC code,
                  with status.py, where domain errors become status codes)
    core.py       checks a packet (size, duplicate, bitstream, model), admits it, dispatches ready groups
    grouper.py    views of one timestamp by capture time within a tolerance; waits at most max_wait for the rest
    decoder.py    joint decoding: entropy decoding on CPU workers, then equal-shape groups synthesized in batches
                  on the device; a bad view is dropped, the others decoded
    sinks.py      PNG per camera (atomic) and/or one video per camera
    acks.py       cumulative ack per camera, journalled in out/acks.json before the Ack is sent
    session.py    per-stream outbox (acks, PacketErrors, close) the servicer sends back
    live.py, webpage.py   live page: mosaic of the newest views, per-camera stats
    metrics.py    Prometheus metrics (mvic_server_*)
    app.py, cli.py        start/stop order, mvic-server command line; config.py: server.yaml
"""
