"""The package version, single-sourced for pyproject and ``nexus_store.__version__``."""

__version__ = "0.2.0"
