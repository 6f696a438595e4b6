"""Unit tier: in-process only (no Ray, no subprocess, no network). CLI commands run through
`ie_flow.cli.run_cli` in this process; jobs use the serial executor."""

from __future__ import annotations

from dataclasses import dataclass

import pytest


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [l for l in self.err.splitlines() if l.startswith("error:")]

    def assert_one_error(self, needle: str) -> None:
        """Bad input: exit 2, exactly one `error:` line naming the problem, no traceback."""
        assert self.code == 2, (self.code, self.err[-2000:])
        assert len(self.error_lines) == 1 and needle in self.error_lines[0], self.err[-2000:]
        assert "Traceback" not in self.err


@pytest.fixture
def ie_flow(capsys: pytest.CaptureFixture[str]):
    """Run `ie-flow ARGS` in-process; returns exit code, stdout and stderr."""
    from ie_flow.cli import run_cli

    def run(*args: str) -> CliResult:
        capsys.readouterr()  # drop what came before
        code = run_cli([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
