"""``python -m inferbox``: the same command line as the ``inferbox`` script."""

from inferbox.cli import main

main()
