"""``python -m tagtune`` == the ``tagtune`` command."""

import sys

try:
    from tagtune.launch.cli import main
except KeyboardInterrupt:  # Ctrl-C during the imports (torch takes seconds): one line
    print("interrupted", file=sys.stderr)
    sys.exit(130)

main()
