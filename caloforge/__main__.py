"""``python -m caloforge``: the same as the ``caloforge`` command (used by torchrun's ``-m``)."""

from caloforge.cli import main

main()
