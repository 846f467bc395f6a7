"""``python -m voxroute``: the same as the ``voxroute`` command."""

from voxroute.cli import main

main()
