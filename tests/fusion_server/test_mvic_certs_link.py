"""The certificates mvic-certs makes (the compose demo's ``bundle``) carry a camera through the real mutual-TLS
server, and its health-probe certificate, which names no camera, cannot send frames."""

from __future__ import annotations

import grpc

from mvic.fusion_server.config import TlsConfig
from mvic.tools import certs
from tests.fusion_server.harness import MiniNode, ServerThread, server_config


def _credentials(folder, stem: str) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=(folder / "ca.crt").read_bytes(),
                                        private_key=(folder / f"{stem}.key").read_bytes(),
                                        certificate_chain=(folder / f"{stem}.crt").read_bytes())


def test_bundle_certificates_stream_and_the_probe_certificate_is_refused(tmp_path, weights, encoder, views):
    tls = tmp_path / "tls"
    assert certs.main(["bundle", "--out", str(tls), "--dns", "localhost", "--ip", "127.0.0.1", "--camera", "C1",
                       "--camera", "C2"]) == 0
    server = tls / "server"
    config = server_config(tmp_path / "out", weights, tls=TlsConfig(
        cert=str(server / "server.crt"), key=str(server / "server.key"), client_ca=str(server / "ca.crt")))
    srv = ServerThread(config).start()
    try:
        node = MiniNode(srv.port, "C1", encoder, credentials=_credentials(tls / "C1", "C1"))
        node.welcome()
        for sequence, capture_ns, bitstream in views["C1"][:2]:
            node.send(sequence, bitstream, capture_ns)
        assert node.wait_acked(2)
        node.close()
        impostor = MiniNode(srv.port, "C1", encoder, credentials=_credentials(tls / "C2", "C2"))  # C2's cert
        assert impostor.refused().code() == grpc.StatusCode.PERMISSION_DENIED
        impostor.close()
        probe = MiniNode(srv.port, "C1", encoder, credentials=_credentials(server, "probe"))
        assert probe.refused().code() == grpc.StatusCode.PERMISSION_DENIED
        probe.close()
    finally:
        srv.stop()
