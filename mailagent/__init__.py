"""mailagent: delegate work to an AI agent on your own computer by email."""

__version__ = "0.1.0"
