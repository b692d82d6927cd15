"""Progress of long work: bars on a terminal, log lines otherwise, nothing when quiet."""

from __future__ import annotations

import io
import logging

import pytest
import torch

from seewhy import engine, progress
from seewhy.targets import make_target
from seewhy.zoo.small import TinyCNN


@pytest.fixture
def seewhy_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="seewhy")
    return caplog


def test_not_a_terminal_gives_log_lines_while_work_lasts(monkeypatch: pytest.MonkeyPatch,
                                                         seewhy_log: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal
    assert progress.mode() == "log"
    with progress.progress(10, "lime", "evaluations", every=0.0) as bar:
        for _ in range(10):
            bar.update()
        bar.done("lime: batch %d/%d in %s", 1, 1, "3 s")
    lines = [r.getMessage() for r in seewhy_log.records]
    assert any(line.startswith("lime: 5/10 evaluations (50%)") and "left" in line for line in lines)
    assert lines[-1] == "lime: batch 1/1 in 3 s"
    assert not any("10/10" in line for line in lines)  # the finished state is said by done(), not twice


def test_log_lines_are_rate_limited(monkeypatch: pytest.MonkeyPatch, seewhy_log: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("sys.stderr", io.StringIO())
    with progress.progress(1000, "rise", "evaluations", every=3600.0) as bar:
        for _ in range(1000):
            bar.update()
    assert seewhy_log.records == []


def test_quiet_silences_lines_and_bars(monkeypatch: pytest.MonkeyPatch, seewhy_log: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("sys.stderr", io.StringIO())
    with progress.quiet():
        assert progress.mode() == "off"
        with progress.progress(4, "x", every=0.0) as bar:
            bar.update(2)
            bar.done("finished")
    assert progress.mode() == "log"  # restored
    assert seewhy_log.records == []


def test_a_terminal_gets_a_bar_and_no_lines(monkeypatch: pytest.MonkeyPatch, seewhy_log: pytest.LogCaptureFixture
                                            ) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Terminal()
    monkeypatch.setattr("sys.stderr", err)
    with progress.progress(3, "explaining", "batches", delay=0, leave=True) as bar:
        bar.update(3)
        bar.done("not logged: the bar shows it")
    assert "explaining" in err.getvalue() and "3/3" in err.getvalue()
    assert seewhy_log.records == []


def test_the_engine_reports_its_evaluations(monkeypatch: pytest.MonkeyPatch, seewhy_log: pytest.LogCaptureFixture
                                            ) -> None:
    monkeypatch.setattr("sys.stderr", io.StringIO())
    monkeypatch.setattr(progress, "EVERY", 0.0)
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.randn(1, 3, 32, 32)
    rows = x.expand(40, -1, -1, -1)
    engine.evaluate(model, rows, torch.zeros(40, dtype=torch.long), make_target(0, 1), like=x, batch_size=8,
                    desc="occlusion")
    lines = [r.getMessage() for r in seewhy_log.records]
    assert lines and all(line.startswith("occlusion: ") for line in lines)
    assert "8/40 evaluations" in lines[0]
    seewhy_log.clear()
    engine.evaluate(model, rows, torch.zeros(40, dtype=torch.long), make_target(0, 1), like=x, batch_size=8,
                    progress=False)
    assert seewhy_log.records == []


def test_format_seconds() -> None:
    assert progress.format_seconds(0.42) == "0.42 s"
    assert progress.format_seconds(12.3) == "12 s"
    assert progress.format_seconds(185) == "3 min 05 s"
    assert progress.format_seconds(3720) == "1 h 02 min"


def test_track_yields_every_item_and_reports_them(monkeypatch: pytest.MonkeyPatch,
                                                  seewhy_log: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("sys.stderr", io.StringIO())
    monkeypatch.setattr(progress, "EVERY", 0.0)
    assert list(progress.track(iter(range(5)), 5, "push", "batches")) == [0, 1, 2, 3, 4]
    assert [r.getMessage().split(",")[0] for r in seewhy_log.records] == [
        "push: 1/5 batches (20%)", "push: 2/5 batches (40%)", "push: 3/5 batches (60%)", "push: 4/5 batches (80%)"]
    seewhy_log.clear()
    assert list(progress.track(range(3), 3, "quiet", enabled=False)) == [0, 1, 2]
    assert seewhy_log.records == []
