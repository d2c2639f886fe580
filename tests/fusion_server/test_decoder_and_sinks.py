"""Decode stage (a desynchronised view is dropped, the others decoded jointly) and the PNG/video sinks."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from mvic.fusion_server.decoder import GroupDecoder, resolve_device
from mvic.fusion_server.errors import DecodeFailedError, MalformedPacketError, PacketModelMismatchError
from mvic.fusion_server.records import DecodedFrame, ReceivedView, ViewGroup
from mvic.fusion_server.sinks import FrameSinks, camera_dir_name
from mvic.shared.bitstream import unpack
from mvic.shared.codec.registry import load_model
from tests.fusion_server.conftest import CAMERAS


def _group(views, index: int, damage: str | None = None) -> ViewGroup:
    received = []
    for cam in CAMERAS:
        seq, capture, bits = views[cam][index]
        view = unpack(bits)
        if cam == damage:  # flip payload bits but keep the packet valid: only the entropy decoder can tell
            stream = bytearray(view.streams[0])
            for i in range(4, len(stream), 7):
                stream[i] ^= 0x5A
            view = replace(view, streams=(bytes(stream),))
        received.append(ReceivedView(cam, "", seq, capture, 0, len(bits), view))
    return ViewGroup("", received[0].capture_ns, tuple(received), 0.0, 0.0, True)


@pytest.fixture(scope="module")
def decoder(weights):
    return GroupDecoder(load_model(weights))


def test_joint_decode_of_a_group(decoder, views, encoder):
    result = decoder.decode(_group(views, 0))
    assert [f.source.camera_id for f in result.frames] == CAMERAS and not result.failed
    reference = encoder.decompress([unpack(views[c][0][2]) for c in CAMERAS])
    for frame, ref in zip(result.frames, reference):
        assert frame.image.shape == (64, 96, 3) and np.array_equal(frame.image, ref.image)


def test_desynchronised_view_is_dropped_and_the_others_decoded(decoder, views):
    result = decoder.decode(_group(views, 1, damage="C2"))
    assert [f.source.camera_id for f in result.frames] == ["C1", "C3"]
    ((view, err),) = result.failed
    assert view.camera_id == "C2" and isinstance(err, DecodeFailedError) and err.sequence == 2


def test_header_checks(decoder, views, tiny_weights):
    header = unpack(views["C1"][0][2]).header
    decoder.check_header(header)
    with pytest.raises(PacketModelMismatchError, match="server's weights"):
        decoder.check_header(replace(header, weights_hash=b"\0" * 8))
    with pytest.raises(MalformedPacketError, match="rate point"):
        decoder.check_header(replace(header, rate_index=9))
    other = GroupDecoder(load_model(tiny_weights["test-tiny-ar"]))
    with pytest.raises(PacketModelMismatchError, match="test-tiny-fast"):
        other.check_header(header)


def test_cpu_fallback():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda:0")
    assert resolve_device("cuda:99") == "cpu"  # absent device: CPU, with a log line


def test_png_and_video_sinks(tmp_path):
    sinks = FrameSinks(tmp_path, png=True, png_name="capture_ns", video=True, video_fps=5)
    rng = np.random.default_rng(0)
    for seq in (1, 2, 3):
        image = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
        src = ReceivedView("cam/1", "", seq, 1000 + seq, 0, 10, None)  # type: ignore[arg-type]
        sinks.write([DecodedFrame(src, image)])
    sinks.close()
    folder = tmp_path / camera_dir_name("cam/1")
    assert folder.name == "cam_1" and sorted(p.name for p in folder.iterdir()) == ["1001.png", "1002.png", "1003.png"]
    png = cv2.cvtColor(cv2.imread(str(folder / "1003.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(png, image)  # lossless, RGB kept
    video = cv2.VideoCapture(str(tmp_path / "cam_1.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    video.release()
