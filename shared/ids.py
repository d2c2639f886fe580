"""Camera and group ids: the one rule that the node, the server and the bitstream share.

    camera id   1..64 UTF-8 bytes, every character printable (no control characters or line breaks): "C1",
                "lobby east". Written in every packet header (``mvic.shared.bitstream``), sent in the Hello
                (``mvic.shared.rpc.hello``), set by the node's ``camera:`` and listed in the server's ``cameras:``.
    group id    0..64 UTF-8 bytes, printable; "" = the server's default group.

``validate_camera_id`` / ``validate_group_id`` raise ``mvic.shared.errors.IdError``; each caller turns it into its
own kind (CorruptBitstreamError, HelloError, ConfigError) so that the message keeps its context. An id is not
necessarily a file name: folders named after a camera go through ``mvic.shared.fileio.safe_name``. Ids (and other
text) that come from the network reach a log line through ``display``: quoted, escaped, and cut to a bounded length.

Pure functions; no imports beyond mvic.shared.errors.
"""

from __future__ import annotations

from mvic.shared.errors import IdError

#: Longest camera or group id, UTF-8 bytes (the bitstream stores the camera id's length in one byte).
MAX_ID_BYTES = 64
#: Characters of untrusted text that ``display`` shows before cutting.
DISPLAY_CHARS = 48


def display(text: object, limit: int = DISPLAY_CHARS) -> str:
    """Untrusted text for a log line or an error message: ``repr`` (so control characters are escaped), cut after
    ``limit`` characters with the count of the rest: ``'aaaa'…(+996 chars)``."""
    text = text if isinstance(text, str) else str(text)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}…(+{len(text) - limit} chars)"


def _problem(text: object, min_bytes: int) -> str | None:
    """Why ``text`` breaks the id rule, or None."""
    if not isinstance(text, str):
        return f"it is a {type(text).__name__}, not text"
    bad = next((c for c in text if not c.isprintable()), None)
    if bad is not None:
        return f"it holds the unprintable character U+{ord(bad):04X}"
    size = len(text.encode("utf-8"))
    if not min_bytes <= size <= MAX_ID_BYTES:
        return f"it is {size} bytes"
    return None


def validate_camera_id(camera_id: str) -> str:
    """``camera_id`` when it follows the rule, else IdError saying what is wrong."""
    why = _problem(camera_id, 1)
    if why:
        raise IdError(f"camera id {display(camera_id)} must be 1..{MAX_ID_BYTES} printable UTF-8 bytes ({why})")
    return camera_id


def validate_group_id(group_id: str) -> str:
    """``group_id`` when it follows the rule ("" is the default group), else IdError saying what is wrong."""
    why = _problem(group_id, 0)
    if why:
        raise IdError(f"group id {display(group_id)} must be 0..{MAX_ID_BYTES} printable UTF-8 bytes ({why})")
    return group_id
