"""``python -m ecgcad`` runs the command-line interface."""

from ecgcad.cli import main

if __name__ == "__main__":
    main()
