"""``python -m vptcli`` runs the ``vpt`` command line (so ``torchrun ... -m vptcli train ...`` works)."""

from vptcli.cli import main

if __name__ == "__main__":
    main()
