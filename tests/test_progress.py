"""Progress bars only on a terminal: a redirected stderr gets no line per update."""

import io
import sys

from semseg.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_bar_when_stderr_is_redirected(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    assert list(progress_bar(range(500), desc="epoch")) == list(range(500))
    assert log.getvalue() == ""


def test_a_bar_on_a_terminal_and_none_when_disabled(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    list(progress_bar(range(5), desc="epoch", file=terminal))
    assert "epoch" in terminal.getvalue()
    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    list(progress_bar(range(5), desc="epoch", enabled=False, file=quiet))
    assert quiet.getvalue() == ""
