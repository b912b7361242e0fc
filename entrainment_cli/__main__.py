"""``python -m entrainment_cli``: the `entrain` command."""

from .cli.app import main

main()
