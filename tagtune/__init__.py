"""tagtune: audio tagging from partially labeled data, compared as a hyperparameter study."""

import os as _os
import sys as _sys


def _interrupt_without_traceback() -> None:
    """Ctrl-C while the ``tagtune`` command is still importing (torch alone takes seconds) ends
    it with one line, not a traceback of whichever import it cut short. Only for the command:
    a program that imports tagtune keeps its own excepthook."""
    previous = _sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            print("interrupted", file=_sys.stderr)
            return
        previous(kind, value, tb)

    _sys.excepthook = hook


if _os.path.basename(_sys.argv[0] if _sys.argv else "") == "tagtune":
    _interrupt_without_traceback()
