"""The command-line runner's progress lines: rate-limited by time and by share of the node's steps."""

import io

from driftless.headless.runner import ConsoleServer


def _progress_lines(total: int, interval: float = 0.0) -> list[str]:
    out = io.StringIO()
    server = ConsoleServer({"1": {"class_type": "DriftlessTrainLoRA"}}, stream=out, min_progress_interval=interval)
    server.send_sync("executing", {"node": "1"})
    for value in range(1, total + 1):
        server.send_sync("progress", {"value": value, "max": total, "node": "1"})
    return [line for line in out.getvalue().splitlines() if "step " in line]


def test_a_long_node_prints_about_one_line_per_percent():
    lines = _progress_lines(4602)
    assert len(lines) == 102  # the first step, every 46 steps (1% of 4602), and the last one
    assert [line.split()[2] for line in lines[:3]] == ["1/4602", "47/4602", "93/4602"]
    assert lines[-1].startswith("[runner]   step 4602/4602")


def test_a_short_node_prints_every_step_when_time_allows():
    assert [line.split()[2] for line in _progress_lines(12)] == [f"{v}/12" for v in range(1, 13)]


def test_time_limits_the_lines_too():
    lines = _progress_lines(50, interval=3600.0)
    assert [line.split()[2] for line in lines] == ["1/50", "50/50"]  # the interval never elapses in between
