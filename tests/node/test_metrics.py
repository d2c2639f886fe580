"""Metric naming rules: declared once, mvic_node_ prefix, base units, _total counters, bounded labels."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from mvic.node.config import NodeConfig, load_config, to_dict
from mvic.node.metrics import NodeMetrics

ROOT = Path(__file__).resolve().parents[2]


def test_names_units_and_labels():
    registry = CollectorRegistry()
    metrics = NodeMetrics("C1", registry)
    metrics.dropped("spool_full", 2)
    metrics.set_connection("connected")
    text = generate_latest(registry).decode()
    families = list(registry.collect())
    assert families
    for family in families:
        assert family.name.startswith("mvic_node_"), family.name
        for sample in family.samples:
            assert set(sample.labels) <= {"camera", "reason", "code", "state", "kind", "le"}, sample
    assert 'mvic_node_frames_dropped_total{camera="C1",reason="spool_full"} 2.0' in text
    assert 'mvic_node_connection_state{camera="C1",state="connected"} 1.0' in text
    assert "mvic_node_encode_seconds_bucket" in text and "mvic_node_spool_bytes" in text
    assert metrics.dropped_count() == 2


def test_two_nodes_in_one_process_need_two_registries():
    NodeMetrics("C1", CollectorRegistry())
    NodeMetrics("C2", CollectorRegistry())  # no global state: declaring twice in fresh registries is fine


def test_example_config_is_valid_and_complete():
    config = load_config(ROOT / "configs" / "node.yaml", {"camera": "C1"})
    assert to_dict(config) == to_dict(NodeConfig(camera="C1"))  # documents every key with its default
