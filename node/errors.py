"""The camera node's errors, a branch of MVIC's tree (``mvic.shared.errors``). Every message says what to do.

    MVICError (mvic.shared.errors)
    ├── ConfigError (shared)        node.yaml or a flag that cannot be used (the message starts with the key path)
    └── NodeError
        ├── SpoolError              the spool folder cannot be used: locked by another node, not writable, or
        │                           holding another camera's state
        ├── SourceError             a source that cannot be opened or read; capture reopens it with backoff
        │   └── SourceHungError     a source call that did not return within its timeout
        └── ImplausibleAckError     the server acknowledged a sequence this node never sent; nothing was deleted

``mvic.node.cli.main`` turns an MVICError at start-up into exit status 2 and one log line.
"""

from __future__ import annotations

from mvic.shared.errors import MVICError


class NodeError(MVICError):
    """Base class of the camera node's own errors."""


class SpoolError(NodeError):
    """The spool folder cannot be used (locked by another node, not writable, another camera's state)."""


class SourceError(NodeError):
    """A source that cannot be opened or read; capture logs it and reopens the source with backoff."""


class SourceHungError(SourceError):
    """A source call did not return within its timeout; capture abandons the call and reopens the source."""


class ImplausibleAckError(NodeError):
    """The server acknowledged a sequence above the highest this node has sent (a Welcome or an Ack). The spool is
    left as it was: the packets stay until a plausible acknowledgement covers them."""

    def __init__(self, acked: int, sent: int, message: str):
        super().__init__(message)
        self.acked = acked  # what the server claimed
        self.sent = sent  # the highest sequence this node has sent, or may have sent before a restart
