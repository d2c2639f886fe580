"""MVIC's error hierarchy. Every message says what to do next.

    MVICError
    ├── BitstreamError                 a .mvic packet cannot be used as it is
    │   ├── TruncatedBitstreamError    shorter than its header or its declared sizes
    │   ├── CorruptBitstreamError      CRC mismatch, bad magic, or a field out of range
    │   ├── UnsupportedVersionError    format version this build cannot read
    │   ├── ModelMismatchError         coded with another model or other weights than the decoder holds
    │   └── DesyncError                entropy decoding produced other symbols than the encoder coded
    ├── ImageError                     an image the codec cannot take (size, dtype, channels)
    ├── GroupError                     views given to the joint decoder that cannot be decoded together
    ├── WeightsError                   a weights file that is missing, altered, or for another model
    │   └── NoTrainedWeightsError      no trained weights are installed for the requested model
    ├── ConfigError                    a config key or flag that cannot be used (message starts with its path)
    ├── IdError                        a camera or group id outside the rule both ends share (mvic.shared.ids)
    ├── HelloError                     a stream's Hello with malformed ids, or headers disagreeing with it
    ├── ResultsError                   an evaluation results file that is missing or not what mvic-eval writes
    └── ExactnessError                 a network cannot be run in exact integer arithmetic

This module imports nothing from torch so that bitstream tools stay light.
"""

from __future__ import annotations


class MVICError(Exception):
    """Base class of every error MVIC raises on purpose."""


class BitstreamError(MVICError, ValueError):
    """A packet that cannot be decoded as it is."""


class TruncatedBitstreamError(BitstreamError):
    """The packet ends before its header or one of its declared sizes."""


class CorruptBitstreamError(BitstreamError):
    """The packet's checksum does not match, or one of its fields is out of range."""


class UnsupportedVersionError(BitstreamError):
    """The packet uses a format version this build cannot read."""


class ModelMismatchError(BitstreamError):
    """The packet was coded with another model or other weights than the decoder's."""


class DesyncError(BitstreamError):
    """The entropy decoder produced other latent symbols than the encoder coded."""

    def __init__(self, message: str, failed: list[int] | None = None):
        super().__init__(message)
        self.failed = list(failed or [])  # positions, in the list given to the decoder, of the views that failed


class ImageError(MVICError, ValueError):
    """An image the codec cannot take."""


class GroupError(MVICError, ValueError):
    """Views that cannot be decoded together."""


class WeightsError(MVICError):
    """A weights file that is missing, altered, or made for another model."""


class NoTrainedWeightsError(WeightsError):
    """No trained weights are installed for the requested model."""


class ConfigError(MVICError, ValueError):
    """A configuration file or flag that cannot be used; the message starts with the key path."""


class IdError(MVICError, ValueError):
    """A camera or group id that breaks ``mvic.shared.ids``' rule; the message says which rule and shows the id."""


class HelloError(MVICError, ValueError):
    """A Hello (``mvic.shared.rpc.hello.Hello``) that breaks the protocol: fix the node's --camera / --group."""


class ResultsError(MVICError, ValueError):
    """A results.json that is missing or not what mvic-eval writes: run mvic-eval again."""


class ExactnessError(MVICError):
    """A network whose integer form could overflow exact float64 arithmetic."""
