"""astromesh-ray: a multi-model, multi-pattern AI agent runtime built on Ray."""

__version__ = "0.1.0"
