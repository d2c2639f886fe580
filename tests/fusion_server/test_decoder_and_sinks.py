"""Decode stage (a desynchronised view is dropped, the others decoded jointly; ready groups synthesized in batches)
and the PNG/video sinks."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

import cv2
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from mvic.fusion_server.decoder import DecodePipeline, GroupDecoder, resolve_device
from mvic.fusion_server.errors import DecodeFailedError, MalformedPacketError, PacketModelMismatchError
from mvic.fusion_server.metrics import ServerMetrics
from mvic.fusion_server.records import DecodedFrame, ReceivedView, ViewSet
from mvic.fusion_server.sinks import FrameSinks
from mvic.shared.bitstream import unpack
from mvic.shared.codec.registry import load_model
from mvic.shared.fileio import safe_name
from tests.fusion_server.conftest import CAMERAS


def _group(views, index: int, damage: str | None = None) -> ViewSet:
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
    return ViewSet("", received[0].capture_ns, tuple(received), 0.0, 0.0, True)


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
    folder = tmp_path / safe_name("cam/1")
    assert folder.name == "cam_1" and sorted(p.name for p in folder.iterdir()) == ["1001.png", "1002.png", "1003.png"]
    png = cv2.cvtColor(cv2.imread(str(folder / "1003.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(png, image)  # lossless, RGB kept
    video = cv2.VideoCapture(str(tmp_path / "cam_1.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    video.release()


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def _sample(registry, name: str, **labels) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_pipeline_batches_ready_groups_of_one_shape(weights, views):
    """While the device is busy, entropy-decoded groups pile up and are synthesized together (max_batch, by shape)."""
    registry = CollectorRegistry()
    decoder = GroupDecoder(load_model(weights), load_model(weights))  # a second load, like the CPU copy on a GPU
    full = [_group(views, i) for i in range(5)]
    partial = replace(full[0], views=full[0].views[:2], complete=False)  # 2 views: another shape
    damaged = _group(views, 5, damage="C2")
    groups = [*full, partial, damaged]
    reference = [decoder.decode(g) for g in groups]
    gate = threading.Event()
    synthesize = decoder.synthesize
    decoder.synthesize = lambda parts: gate.wait(30) and synthesize(parts)  # the device is busy until released

    async def run():
        pipeline = DecodePipeline(decoder, ServerMetrics(registry), workers=2, max_batch=4)
        pipeline.start()
        try:
            futures = [pipeline.submit(g) for g in groups]
            deadline = time.monotonic() + 30
            while _sample(registry, "mvic_server_decode_seconds_count", stage="entropy") < len(groups):
                assert time.monotonic() < deadline, "entropy decoding did not finish within 30 s"
                await asyncio.sleep(0.01)
            gate.set()
            return await asyncio.wait_for(asyncio.gather(*futures), 30)
        finally:
            await pipeline.stop()

    results = asyncio.run(run())
    batches = _sample(registry, "mvic_server_decode_batch_groups_count")
    assert _sample(registry, "mvic_server_decode_batch_groups_sum") == len(groups)
    assert batches < len(groups) and _sample(registry, "mvic_server_decode_batch_groups_bucket", le="1.0") < batches
    assert _sample(registry, "mvic_server_decode_seconds_count", stage="synthesis") == batches
    for got, ref in zip(results, reference):
        assert got.view_set is ref.view_set
        assert [f.source for f in got.frames] == [f.source for f in ref.frames]
        # the same pixels as decoding each group alone, up to one level where batching changed a float sum
        assert all(_max_diff(a.image, b.image) <= 1 for a, b in zip(got.frames, ref.frames))
        assert [(v, type(e)) for v, e in got.failed] == [(v, type(e)) for v, e in ref.failed]
    assert [v.camera_id for v, _ in results[-1].failed] == ["C2"]  # the bad view dropped, its group still decoded
    assert [f.source.camera_id for f in results[-1].frames] == ["C1", "C3"]


def test_a_failed_batch_is_retried_group_by_group(weights, views, monkeypatch):
    decoder = GroupDecoder(load_model(weights))
    groups = [_group(views, i) for i in range(3)]
    reference = [decoder.decode(g) for g in groups]
    real = decoder.model.synthesize

    def synthesize(batch, precision, fusion):
        if len(batch) > 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(batch, precision)

    monkeypatch.setattr(decoder.model, "synthesize", synthesize)
    parts = [p for g in groups for p in decoder.entropy_decode(g).parts]
    for done, ref in zip(decoder.synthesize(parts), reference):
        assert not done.failed and all(np.array_equal(a.image, b.image) for a, b in zip(done.frames, ref.frames))


def test_a_device_fault_moves_synthesis_to_the_cpu_and_loses_no_view(weights, views):
    """An injected CUDA fault: the views are synthesized again on the CPU copy, none is rejected, and the server is
    told once (health NOT_SERVING); later groups decode on the CPU."""
    import torch

    registry = CollectorRegistry()
    gpu_like, cpu_copy = load_model(weights), load_model(weights)
    decoder = GroupDecoder(gpu_like, cpu_copy)
    groups = [_group(views, i) for i in range(3)]
    reference = [decoder.decode(g) for g in groups]
    calls = []

    def faulty(batch, precision, fusion):
        calls.append(len(batch))
        raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered (injected)")

    gpu_like.synthesize = faulty
    faults = []

    async def run():
        pipeline = DecodePipeline(decoder, ServerMetrics(registry), workers=2, max_batch=4,
                                  on_device_fault=faults.append)
        pipeline.start()
        try:
            return await asyncio.wait_for(asyncio.gather(*(pipeline.submit(g) for g in groups)), 60)
        finally:
            await pipeline.stop()

    results = asyncio.run(run())
    assert calls and decoder.model is cpu_copy and decoder.device == "cpu"
    assert len(faults) == 1 and "illegal memory access" in faults[0] and "restart the server" in faults[0]
    assert _sample(registry, "mvic_server_device_faults_total") == 1
    for got, ref in zip(results, reference):
        assert not got.failed and len(got.frames) == len(ref.frames)  # "not decoded" for a moment, never rejected
        assert all(_max_diff(a.image, b.image) <= 1 for a, b in zip(got.frames, ref.frames))  # batched float sums


def test_out_of_memory_splits_the_batch_then_counts_as_a_device_fault(weights, views):
    import torch

    from mvic.fusion_server.decoder import DeviceFaultError, is_device_fault

    assert is_device_fault(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_device_fault(RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"))
    assert not is_device_fault(RuntimeError("shape mismatch")) and not is_device_fault(ValueError("CUDA"))
    decoder = GroupDecoder(load_model(weights))
    decoder.model.synthesize = lambda batch, precision, fusion: (_ for _ in ()).throw(
        torch.cuda.OutOfMemoryError("out of memory"))
    parts = [p for i in range(2) for p in decoder.entropy_decode(_group(views, i)).parts]
    with pytest.raises(DeviceFaultError, match="out of memory"):
        decoder.synthesize(parts)
    assert decoder.fall_back_to_cpu() is False  # a CPU-only decoder has nowhere to go
