"""The shared handshake records: Hello and Welcome round trips, stream headers, and the checks both ends rely on."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mvic.shared.errors import HelloError, MVICError
from mvic.shared.rpc import CAMERA_METADATA_KEY, GROUP_METADATA_KEY
from mvic.shared.rpc import mvic_pb2 as pb
from mvic.shared.rpc import DEFAULT_MAX_PACKET_BYTES
from mvic.shared.rpc.hello import Hello, Welcome, mvic_version

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
    dataclasses.replace(HELLO, node_version="v" * 128).check()  # MAX_VERSION_BYTES


@pytest.mark.parametrize("change, metadata, words", [
    ({"camera_id": ""}, None, "camera id '' must be 1..64 printable UTF-8 bytes"),
    ({"camera_id": "é" * 33}, None, "camera id"),  # 66 bytes
    ({"camera_id": "C\n1"}, None, "camera id"),
    ({"group_id": "g" * 65}, None, "group id"),
    ({"group_id": "a\tb"}, None, ("group id 'a\\tb' must be 0..64 printable UTF-8 bytes (it holds the unprintable "
                                   "character U+0009); fix the node's --camera / --group")),
    ({"camera_id": "x" * 10_000}, None, "…(+9952 chars) must be 1..64"),  # a huge id is shown cut
    ({"weights_hash": b"\1" * (1 << 20)}, None, "weights_hash is 1048576 bytes, not 8"),  # issue 13: echoed whole
    ({"weights_hash": b""}, None, "weights_hash is 0 bytes, not 8"),
    ({"node_version": "v" * 129}, None, "node_version 'vvv"),  # issue 13: a 4 MiB version was logged on connect
    ({}, {CAMERA_METADATA_KEY: "C9"}, "stream metadata mvic-camera='C9' disagrees with the Hello ('C1')"),
    ({}, {GROUP_METADATA_KEY: ""}, "stream metadata mvic-group='' disagrees with the Hello ('plaza')"),
])
def test_check_refuses(change, metadata, words):
    with pytest.raises(HelloError) as info:
        dataclasses.replace(HELLO, **change).check(metadata)
    assert words in str(info.value)
    assert isinstance(info.value, MVICError) and isinstance(info.value, ValueError)


def test_welcome_fields_match_the_proto_message_and_round_trip():
    assert [f.name for f in dataclasses.fields(Welcome)] == [f.name for f in pb.Welcome.DESCRIPTOR.fields]
    welcome = Welcome(2**64 - 1, True, 1 << 20, "1.2.3")
    assert Welcome.from_proto(pb.Welcome.FromString(welcome.to_proto().SerializeToString())) == welcome
    assert Welcome.from_proto(pb.Welcome()) == Welcome(0, False, 0, "")


def test_welcome_stored_through_and_packet_limit():
    assert Welcome(7, True, 0, "").stored_through == 7
    assert Welcome(7, False, 0, "").stored_through == 0  # has_acked False: the server holds nothing
    assert Welcome(0, False, 0, "").packet_limit(64 << 20) == DEFAULT_MAX_PACKET_BYTES  # 0 = the default
    assert Welcome(0, False, 1 << 30, "").packet_limit(64 << 20) == 64 << 20  # never above the node's own limit


def test_one_version_string_for_node_and_server():
    assert mvic_version() and isinstance(mvic_version(), str)
