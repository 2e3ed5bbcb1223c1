"""first_line: an exception as the few words a one-line error message carries."""

from __future__ import annotations

from tagtune.study.errors import first_line


def test_the_first_line_of_the_text_or_the_type_where_there_is_none():
    assert first_line(ValueError("bad value\n  traceback-like detail\n")) == "bad value"
    assert first_line(ValueError("\n  leading blank lines\nmore")) == "leading blank lines"
    assert first_line(KeyError()) == "KeyError" and first_line(OSError("  ")) == "OSError"


def test_limit_and_named():
    e = RuntimeError("x" * 300)
    assert first_line(e) == "x" * 150 and first_line(e, 20) == "x" * 20
    assert first_line(e, None) == "x" * 300
    assert first_line(EOFError("cut short"), named=True) == "EOFError: cut short"
    assert first_line(EOFError(), named=True) == "EOFError"
