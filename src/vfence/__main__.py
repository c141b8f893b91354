"""``python -m vfence``: the same command line as the ``vfence`` script."""

from vfence.controller.cli import main

main()
