"""``python -m nesfgen`` (and ``torchrun -m nesfgen``) runs the command line."""

from nesfgen.cli import main

main()
