"""tracker: status of every unit of work in an asynchronous pipeline."""

__version__ = "0.1.0"
