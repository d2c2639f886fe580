"""The one camera/group id rule (mvic.shared.ids), which the bitstream, the Hello and both configs import."""

from __future__ import annotations

import pytest

from mvic.shared.errors import IdError, MVICError
from mvic.shared.ids import MAX_ID_BYTES, display, validate_camera_id, validate_group_id


@pytest.mark.parametrize("camera", ["C1", "lobby east", "é" * 32, "a/b", "x" * MAX_ID_BYTES])
def test_valid_camera_ids(camera):
    assert validate_camera_id(camera) == camera


@pytest.mark.parametrize("camera, why", [
    ("", "it is 0 bytes"),
    ("é" * 33, "it is 66 bytes"),
    ("C\n1", "U+000A"),
    ("C\x001", "U+0000"),
    (7, "it is a int, not text"),
])
def test_invalid_camera_ids_say_why(camera, why):
    with pytest.raises(IdError) as info:
        validate_camera_id(camera)
    assert "must be 1..64 printable UTF-8 bytes" in str(info.value) and why in str(info.value)
    assert isinstance(info.value, MVICError) and isinstance(info.value, ValueError)


def test_group_ids_may_be_empty():
    assert validate_group_id("") == "" and validate_group_id("plaza") == "plaza"
    with pytest.raises(IdError, match="group id"):
        validate_group_id("g" * 65)


def test_display_is_escaped_and_bounded():
    assert display("C1") == "'C1'"
    assert display("a\nb") == "'a\\nb'"
    long = display("x" * 10_000)
    assert long.endswith("…(+9952 chars)") and len(long) < 80
    assert display(b"\x00" * 3) == repr(str(b"\x00" * 3))


def test_the_rule_is_imported_not_retyped():
    """Every place that checks a camera id uses this module (issue 12: one home per concept)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for path in ("shared/bitstream.py", "shared/rpc/hello.py", "node/config.py", "fusion_server/config.py"):
        text = (root / path).read_text()
        assert "validate_camera_id" in text, path
        assert ".isprintable()" not in text, f"{path} re-types the id rule"
