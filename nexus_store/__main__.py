"""``python -m nexus_store``: the ``nexus-store`` command."""

from nexus_store.cli import main

if __name__ == "__main__":
    main()
