"""``python -m qtkit ...``: the same as the ``qtkit`` command."""

from qtkit.cli import main

main()
