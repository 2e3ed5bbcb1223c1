"""An exception in a few words, for the one-line messages every refusal of tagtune prints."""

from __future__ import annotations


def first_line(e: BaseException, limit: int | None = 150, *, named: bool = False) -> str:
    """``e``'s first line of text (at most ``limit`` characters; None: all of it), after its
    type's name with ``named``; its type's name alone where it has no text. A library's
    multi-line message must not break a one-line error."""
    text = str(e).strip().splitlines()
    if not text:
        return type(e).__name__
    return f"{type(e).__name__}: {text[0][:limit]}" if named else text[0][:limit]


__all__ = ["first_line"]
