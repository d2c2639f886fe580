"""Per-camera bearer tokens on top of mTLS (issue 14, item 6): the table, the check, its reload, mvic-certs token."""

from __future__ import annotations

import logging

import pytest

from mvic.fusion_server.config import ConfigError, load_config
from mvic.fusion_server.errors import TokenError
from mvic.fusion_server.status import status_for
from mvic.fusion_server.tokens import CameraTokens, bearer_token, parse_tokens, token_digest
from mvic.tools.certs import main as certs_main
from tests.files import rewrite
from tests.fusion_server.test_core import Clock

DIGEST = "ab" * 32


@pytest.mark.parametrize("value, token", [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None),
                                          ("Bearer", None), ("", None), ("Bearer " + "x" * 2000, None)])
def test_bearer_header(value, token):
    assert bearer_token({"authorization": value}) == token
    assert bearer_token(None) is None


def test_table_lines_and_errors():
    assert parse_tokens(f"# tokens\nC1 sha256:{DIGEST.upper()}  # lobby\n\nC2 sha256:{DIGEST}\n") == {
        "C1": DIGEST, "C2": DIGEST}
    for bad, message in ((f"C1 {DIGEST}", "line 1 is not"), (f"C1 sha256:{DIGEST[:-1]}", "line 1 is not"),
                         (f"C1 sha256:{DIGEST}\nC1 sha256:{DIGEST}", "line 2: camera 'C1' is listed twice")):
        with pytest.raises(ValueError, match=message):
            parse_tokens(bad)
    with pytest.raises(ValueError) as err:
        parse_tokens(f"C1 sha256:{DIGEST}\nC2 sha256:{DIGEST} extra")
    assert DIGEST not in str(err.value)  # the digest of another line is never echoed


def test_check_needs_the_cameras_own_token_and_is_unauthenticated(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"C1 sha256:{token_digest('t1')}\nC2 sha256:{token_digest('t2')}\n")
    tokens = CameraTokens(str(path))
    tokens.check("C1", {"authorization": "Bearer t1"})
    for camera, metadata in (("C1", {}), ("C1", {"authorization": "Bearer t2"}), ("C3", {"authorization": "Bearer t1"}),
                             ("C1", {"authorization": "t1"})):
        with pytest.raises(TokenError) as err:
            tokens.check(camera, metadata)
        assert "t1" not in str(err.value).split("camera", 1)[0] and "Bearer t" not in str(err.value)
        assert status_for(err.value).name == "UNAUTHENTICATED"
    CameraTokens("").check("C1", {})  # not configured: every stream passes


def test_the_file_is_reread_and_a_bad_one_keeps_the_last_good_table(tmp_path, caplog):
    path, clock = tmp_path / "tokens", Clock()
    path.write_text(f"C1 sha256:{token_digest('old')}\n")
    tokens = CameraTokens(str(path), interval_s=1.0, clock=clock)
    rewrite(path, f"C1 sha256:{token_digest('new')}\n")
    tokens.check("C1", {"authorization": "Bearer old"})  # not looked at again before interval_s
    clock.now += 2.0
    with pytest.raises(TokenError):
        tokens.check("C1", {"authorization": "Bearer old"})
    tokens.check("C1", {"authorization": "Bearer new"})
    rewrite(path, "C1 garbage\n")
    clock.now += 2.0
    with caplog.at_level(logging.ERROR, logger="mvic.fusion_server.tokens"):
        tokens.check("C1", {"authorization": "Bearer new"})
    assert "keeping the last good table" in caplog.text


def test_config_needs_tls_and_an_existing_file(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("")
    with pytest.raises(ConfigError, match="^tls.tokens: bearer tokens need tls"):
        load_config(overrides={"tls.tokens": str(path)})


def test_mvic_certs_token_issues_a_token_the_server_accepts(tmp_path, capsys):
    table = tmp_path / "server" / "camera-tokens"
    table.parent.mkdir()
    assert certs_main(["token", "--out", str(tmp_path / "C1"), "--camera", "C1", "--tokens", str(table)]) == 0
    assert certs_main(["token", "--out", str(tmp_path / "C2"), "--camera", "C2", "--tokens", str(table)]) == 0
    token = (tmp_path / "C1" / "token").read_text().strip()
    assert len(token) >= 40 and oct((tmp_path / "C1" / "token").stat().st_mode & 0o777) == "0o600"
    assert token not in table.read_text()  # only its hash
    CameraTokens(str(table)).check("C1", {"authorization": f"Bearer {token}"})
    # a second token for C1 needs --force, and then the old one stops working
    assert certs_main(["token", "--out", str(tmp_path / "C1"), "--camera", "C1", "--tokens", str(table)]) == 2
    assert certs_main(["token", "--out", str(tmp_path / "C1"), "--camera", "C1", "--tokens", str(table),
                       "--force"]) == 0
    renewed = (tmp_path / "C1" / "token").read_text().strip()
    tokens = CameraTokens(str(table))
    tokens.check("C1", {"authorization": f"Bearer {renewed}"})
    with pytest.raises(TokenError):
        tokens.check("C1", {"authorization": f"Bearer {token}"})
    assert set(parse_tokens(table.read_text())) == {"C1", "C2"}
