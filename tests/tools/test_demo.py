"""mvic-demo, the README's main job, end to end with a tiny model: server + 3 node processes on loopback."""

from __future__ import annotations

import io
import json

from mvic.tools.demo import Progress, main


def test_demo_decodes_every_frame_and_reports(tiny_weights, tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["--cameras", "3", "--frames", "2", "--fps", "2", "--size", "64x96", "--model", "test-tiny-fast",
                 "--weights", str(tiny_weights["test-tiny-fast"]), "--out", str(out), "--http-port", "0",
                 "--lead-s", "15"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decoded"] == 6 and summary["lost"] == 0 and summary["captured"] == 6
    assert summary["mean_bpp"] > 0 and 0 < summary["psnr_db"] < 60
    assert sorted(p.parent.name for p in (out / "frames").rglob("*.png")) == ["C1"] * 2 + ["C2"] * 2 + ["C3"] * 2
    assert "decoded / lost          6 / 0" in printed


def test_wildtrack_folder_names_are_found_or_the_missing_camera_is_named(tmp_path):
    import pytest

    from mvic.tools.demo import wildtrack_videos

    for n in (1, 2):
        (tmp_path / f"cam{n}.mp4").write_bytes(b"")
    (tmp_path / "C3.mp4").write_bytes(b"")
    assert [p.name for p in wildtrack_videos(tmp_path, 3)] == ["cam1.mp4", "cam2.mp4", "C3.mp4"]
    with pytest.raises(FileNotFoundError, match="camera C4"):
        wildtrack_videos(tmp_path, 4)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_plain_line_every_few_seconds_when_stdout_is_not_a_terminal():
    """A log file used to get one line holding thousands of carriage-return updates (one per second of the run)."""
    now = [0.0]
    out = io.StringIO()  # a file or a pipe: not a TTY
    progress = Progress(out, every_s=5.0, clock=lambda: now[0])
    for second in range(61):  # a minute of updates, one a second (what run_nodes does)
        now[0] = float(second)
        progress.update(f"decoded {second}/60 views")
    progress.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0] == "decoded 0/60 views" and lines[-1] == "decoded 60/60 views"  # the final state is printed
    assert len(lines) == 13  # seconds 0, 5, ..., 60
    progress.close()  # nothing new: nothing printed twice
    assert out.getvalue().splitlines() == lines


def test_progress_rewrites_one_line_on_a_terminal():
    out = _Terminal()
    progress = Progress(out, every_s=5.0, clock=lambda: 0.0)
    for n in range(3):
        progress.update(f"decoded {n}/2 views")
    progress.close()
    assert out.getvalue() == "\rdecoded 0/2 views\rdecoded 1/2 views\rdecoded 2/2 views\n"
