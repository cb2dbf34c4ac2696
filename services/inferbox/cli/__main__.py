"""``python -m inferbox.cli``: the same command line as the ``inferbox`` script."""

from inferbox.cli import main

main()
