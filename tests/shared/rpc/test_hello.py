"""The shared Hello record: protobuf round trip, stream headers, and the checks both ends rely on."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mvic.shared.errors import HelloError, MVICError
from mvic.shared.rpc import CAMERA_METADATA_KEY, GROUP_METADATA_KEY
from mvic.shared.rpc import mvic_pb2 as pb
from mvic.shared.rpc.hello import Hello

HELLO = Hello("C1", "plaza", 0xF001, b"\xab" * 8, 1, "1.2.3", 1_700_000_000_000_000_000)


def test_fields_match_the_proto_message():
    assert [f.name for f in dataclasses.fields(Hello)] == [f.name for f in pb.Hello.DESCRIPTOR.fields]


@given(camera=st.text(min_size=1, max_size=16), group=st.text(max_size=16), model_id=st.integers(0, 2**32 - 1),
       weights_hash=st.binary(max_size=8), format_version=st.integers(0, 2**32 - 1), node_version=st.text(),
       session_ns=st.integers(0, 2**64 - 1))
def test_proto_round_trip(camera, group, model_id, weights_hash, format_version, node_version, session_ns):
    hello = Hello(camera, group, model_id, weights_hash, format_version, node_version, session_ns)
    wire = hello.to_proto().SerializeToString()
    back = Hello.from_proto(pb.Hello.FromString(wire))
    assert back == hello and type(back.weights_hash) is bytes


def test_default_proto_reads_as_empty_fields():
    assert Hello.from_proto(pb.Hello()) == Hello("", "", 0, b"", 0, "", 0)


def test_metadata_carries_camera_and_group():
    assert dict(HELLO.metadata()) == {CAMERA_METADATA_KEY: "C1", GROUP_METADATA_KEY: "plaza"}


@pytest.mark.parametrize("metadata", [None, {}, dict(HELLO.metadata()), {CAMERA_METADATA_KEY: "C1"}])
def test_check_accepts_a_well_formed_hello(metadata):
    HELLO.check(metadata)
    dataclasses.replace(HELLO, group_id="", camera_id="é" * 32).check()  # "" = default group; 64 UTF-8 bytes


@pytest.mark.parametrize("change, metadata, words", [
    ({"camera_id": ""}, None, "camera id '' must be 1..64 printable UTF-8 bytes"),
    ({"camera_id": "é" * 33}, None, "camera id"),  # 66 bytes
    ({"camera_id": "C\n1"}, None, "camera id"),
    ({"group_id": "g" * 65}, None, "group id"),
    ({"group_id": "a\tb"}, None, "group id 'a\\tb' must be 0..64 printable bytes"),
    ({}, {CAMERA_METADATA_KEY: "C9"}, "stream metadata mvic-camera='C9' disagrees with the Hello ('C1')"),
    ({}, {GROUP_METADATA_KEY: ""}, "stream metadata mvic-group='' disagrees with the Hello ('plaza')"),
])
def test_check_refuses(change, metadata, words):
    with pytest.raises(HelloError) as info:
        dataclasses.replace(HELLO, **change).check(metadata)
    assert words in str(info.value)
    assert isinstance(info.value, MVICError) and isinstance(info.value, ValueError)
