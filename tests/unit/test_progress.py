"""Progress without a terminal: a line per milestone or per interval, a closing line unless asked not to."""

from __future__ import annotations

import logging

from ie_flow.progress import Progress


def test_lines_for_milestones_and_the_end(caplog):
    with caplog.at_level(logging.INFO, logger="ie_flow"):
        with Progress("stage x", 4, "unit", terminal=False, every_s=3600) as p:
            p.update(1)  # no line: neither a milestone nor an interval
            p.update(1, "group 1 done", milestone=True)
            p.update(2)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("stage x: 2/4 unit (") and lines[0].endswith(": group 1 done") and "ETA" in lines[0]
    assert lines[1].startswith("stage x: 4/4 unit (") and "ETA" not in lines[1]


def test_inner_progress_can_skip_its_closing_line(caplog):
    with caplog.at_level(logging.INFO, logger="ie_flow"):
        with Progress("training", 10, "step", terminal=False, every_s=3600, closing_line=False) as p:
            p.update(10)
    assert caplog.records == []
