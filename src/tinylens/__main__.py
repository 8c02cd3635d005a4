"""``python -m tinylens`` runs the CLI."""

from tinylens.cli import main

# Guarded, as multiprocessing asks of a main module: a spawned process (tinylens.train_data starts
# data workers) may import it again as ``__mp_main__`` and must not run the CLI there.
if __name__ == "__main__":
    main()
