"""inferbox: a single-host GPU inference appliance."""

__version__ = "0.1.0"
