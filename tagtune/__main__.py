"""``python -m tagtune`` == the ``tagtune`` command."""

from tagtune.launch.cli import main

main()
