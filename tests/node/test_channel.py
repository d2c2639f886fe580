"""The node's channel factory with mutual TLS and an optional bearer token (issue 14): what a renewal is, and that
a token file is only taken over TLS."""

from __future__ import annotations

import asyncio

import pytest

from mvic.node.channel import ChannelFactory
from mvic.node.config import ConfigError, TlsConfig
from tests.files import rewrite


def files(tmp_path, token: bool):
    paths = {}
    for name in ("ca", "cert", "key", *(["token_file"] if token else [])):
        path = tmp_path / name
        path.write_text(f"{name} v1\n")
        paths[name] = str(path)
    return paths


def test_a_token_needs_tls_and_an_existing_file(tmp_path):
    token = tmp_path / "token"
    token.write_text("t\n")
    with pytest.raises(ConfigError, match="^tls.token_file: a bearer token is only sent over TLS"):
        TlsConfig(token_file=str(token))
    with pytest.raises(ConfigError, match="^tls.token_file: .* is not a file"):
        TlsConfig(**{**files(tmp_path, False), "token_file": str(tmp_path / "missing")})


@pytest.mark.parametrize("token", [False, True])
def test_a_changed_token_or_certificate_is_a_renewal_and_an_empty_one_is_not(tmp_path, token):
    paths = files(tmp_path, token)
    factory = ChannelFactory("127.0.0.1:1", [], TlsConfig(**paths, reload_s=0.01), lb="pick_first")

    async def open_and_close():
        channel = factory.open()  # composite credentials with a token: building them must not fail
        await channel.close()

    asyncio.run(open_and_close())
    assert not factory.renewed()
    changed = paths["token_file" if token else "cert"]
    rewrite(changed, "", wait_s=0.05)  # half written: keep the current channel
    assert not factory.renewed()
    rewrite(changed, "renewed v2\n", wait_s=0.05)
    assert factory.renewed()
    asyncio.run(open_and_close())
    assert not factory.renewed()
