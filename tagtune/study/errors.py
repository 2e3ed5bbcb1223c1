"""An exception in a few words, for the one-line messages every refusal of tagtune prints; the
ConfigError every bad value of a config is (here, below every module that refuses one)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value out of range or unknown; the message is one line naming the field."""

    def __init__(self, field: str, problem: str, where: str = "config"):
        self.field = field
        super().__init__(f"{where}: {field}: {problem}")


def first_line(e: BaseException, limit: int | None = 150, *, named: bool = False) -> str:
    """``e``'s first line of text (at most ``limit`` characters; None: all of it), after its
    type's name with ``named``; its type's name alone where it has no text. A library's
    multi-line message must not break a one-line error."""
    text = str(e).strip().splitlines()
    if not text:
        return type(e).__name__
    return f"{type(e).__name__}: {text[0][:limit]}" if named else text[0][:limit]


__all__ = ["ConfigError", "first_line"]
