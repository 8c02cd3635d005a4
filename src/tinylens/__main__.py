"""``python -m tinylens`` runs the CLI."""

from tinylens.cli import main

main()
