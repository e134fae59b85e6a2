"""mailagent: delegate work to an AI agent on your own computer by email."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mailagent")  # the one version, kept in pyproject.toml
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
