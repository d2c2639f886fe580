"""The live page and the metrics endpoint closed to strangers, over real loopback sockets (issue 14): a token the
page requires (401 with WWW-Authenticate without it), HTTPS with a certificate made by mvic-certs, the address the
metrics bind, and loopback defaults."""

from __future__ import annotations

import base64
import http.client
import logging
import socket
import ssl
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from mvic.fusion_server import cli
from mvic.fusion_server.app import start_metrics
from mvic.fusion_server.config import ConfigError, ServerConfig, load_config
from mvic.shared.addresses import split_host_port
from mvic.fusion_server.webpage import read_token, tls_context
from mvic.tools import certs
from tests.fusion_server.test_webpage import SLACK_S, PageThread

TOKEN = b"s3cret-token-0123456789"


def _get(conn: http.client.HTTPConnection, path: str, headers: dict[str, str] | None = None):
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    return r.status, r.headers, r.read()


def _basic(user: str, password: bytes) -> str:
    return "Basic " + base64.b64encode(user.encode() + b":" + password).decode()


def test_the_page_refuses_a_request_without_its_token_and_serves_one_with_it():
    with PageThread(max_connections=8, timeout_s=5.0, token=TOKEN) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=SLACK_S)
        try:
            for path in ("/", "/api/stats", "/cameras/C1.jpg"):
                status, headers, body = _get(conn, path)
                assert status == 401 and b"token" in body and b"cameras" not in body, path
                assert any(c.startswith("Basic ") for c in headers.get_all("WWW-Authenticate"))
                assert any(c.startswith("Bearer ") for c in headers.get_all("WWW-Authenticate"))
            for wrong in ("Bearer nope", "Bearer " + TOKEN.decode()[:-1], _basic("u", b"nope"), "Basic !!!",
                          "Token " + TOKEN.decode(), TOKEN.decode()):
                assert _get(conn, "/api/stats", {"Authorization": wrong})[0] == 401, wrong
            # the same kept-alive connection is answered once the token comes
            status, _, body = _get(conn, "/api/stats", {"Authorization": "Bearer " + TOKEN.decode()})
            assert status == 200 and b'"cameras"' in body
            assert _get(conn, "/", {"Authorization": _basic("anyone", TOKEN)})[0] == 200  # a browser's prompt
            assert _get(conn, "/healthz")[0] == 200  # probes need no token and learn only "ready"
        finally:
            conn.close()


def test_https_with_a_certificate_from_mvic_certs(tmp_path):
    ca, server = tmp_path / "ca", tmp_path / "server"
    assert certs.main(["ca", "--out", str(ca)]) == 0
    assert certs.main(["server", "--ca", str(ca), "--out", str(server), "--ip", "127.0.0.1", "--dns", "localhost"]) == 0
    context = tls_context(str(server / "server.crt"), str(server / "server.key"))
    with PageThread(max_connections=8, timeout_s=2.0, token=TOKEN, tls=context) as srv:
        client = ssl.create_default_context(cafile=str(ca / "ca.crt"))
        conn = http.client.HTTPSConnection("127.0.0.1", srv.port, timeout=SLACK_S, context=client)
        try:
            assert _get(conn, "/api/stats")[0] == 401
            assert _get(conn, "/api/stats", {"Authorization": "Bearer " + TOKEN.decode()})[0] == 200
            assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
        finally:
            conn.close()
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):  # a client not trusting the CA
            urllib.request.urlopen(f"https://127.0.0.1:{srv.port}/healthz", timeout=SLACK_S,
                                   context=ssl.create_default_context())
        with socket.create_connection(("127.0.0.1", srv.port), timeout=SLACK_S) as plain:
            plain.sendall(b"GET /api/stats HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = plain.recv(4096)
            assert b"cameras" not in answer and not answer.startswith(b"HTTP/1.1 200")  # no plaintext answers


def test_a_token_file_must_hold_a_real_token(tmp_path):
    good, short = tmp_path / "good", tmp_path / "short"
    good.write_bytes(TOKEN + b"\n")
    short.write_bytes(b"1234\n")
    assert read_token(str(good)) == TOKEN
    with pytest.raises(OSError, match="at least 16"):
        read_token(str(short))
    with pytest.raises(OSError):
        tls_context(str(good), str(good))


def test_metrics_bind_the_host_given_and_loopback_by_default(caplog):
    assert ServerConfig().metrics_host == "127.0.0.1"
    registry = CollectorRegistry()
    Counter("mvic_test_total", "x", registry=registry).inc()
    server = start_metrics("127.0.0.1", 0, registry)
    try:
        assert server.server_address[0] == "127.0.0.1"
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=SLACK_S).read()
        assert b"mvic_test_total 1.0" in body
    finally:
        server.shutdown()
        server.server_close()
    with caplog.at_level(logging.WARNING, logger="mvic.fusion_server.app"):
        server = start_metrics("0.0.0.0", 0, registry)
    try:
        assert server.server_address[0] == "0.0.0.0"
        assert any(r.levelno == logging.WARNING and "open to anyone" in r.getMessage() for r in caplog.records)
    finally:
        server.shutdown()
        server.server_close()


def test_command_line_and_config_keys(tmp_path):
    token = tmp_path / "token"
    token.write_bytes(TOKEN)
    args = cli.build_parser().parse_args(["--http", "8080", "--http-token-file", str(token), "--metrics-port", "9101",
                                          "--metrics-host", "0.0.0.0"])
    config = cli.config_from_args(args)
    assert split_host_port(config.http) == ("127.0.0.1", 8080)  # a bare port is on loopback
    assert (config.http_token_file, config.metrics_host, config.metrics_port) == (str(token), "0.0.0.0", 9101)
    with pytest.raises(ConfigError, match="http_cert"):
        load_config(None, {"http_cert": str(token)})
    with pytest.raises(ConfigError, match="http_token_file"):
        load_config(None, {"http_token_file": str(tmp_path / "missing")})


def _page_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name == "mvic.fusion_server.app" and "live page" in r.getMessage()]


def test_the_app_serves_https_with_a_token_and_warns_about_an_open_page(tmp_path, weights, caplog):
    from dataclasses import replace

    from tests.fusion_server.harness import ServerThread, server_config

    assert certs.main(["bundle", "--out", str(tmp_path / "tls"), "--ip", "127.0.0.1", "--token"]) == 0
    tls = tmp_path / "tls" / "server"
    secured = replace(server_config(tmp_path / "out", weights), http="0.0.0.0:0", metrics_port=_free_port(),
                      http_token_file=str(tls / "page-token"), http_cert=str(tls / "server.crt"),
                      http_key=str(tls / "server.key"))
    caplog.set_level(logging.INFO)
    srv = ServerThread(secured).start()
    try:
        assert srv.app._metrics_server.server_address[0] == "127.0.0.1"  # metrics_host's default
        client = ssl.create_default_context(cafile=str(tls / "ca.crt"))
        conn = http.client.HTTPSConnection("127.0.0.1", srv.app.http_port, timeout=SLACK_S, context=client)
        token = (tls / "page-token").read_text().strip()
        try:
            assert _get(conn, "/api/stats")[0] == 401
            assert _get(conn, "/api/stats", {"Authorization": f"Bearer {token}"})[0] == 200
        finally:
            conn.close()
    finally:
        srv.stop()
    assert _page_warnings(caplog) == []
    caplog.clear()
    srv = ServerThread(replace(server_config(tmp_path / "out2", weights), http="0.0.0.0:0")).start()
    srv.stop()
    assert len(_page_warnings(caplog)) == 1 and "http_token_file" in _page_warnings(caplog)[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
