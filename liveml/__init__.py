"""liveml: the config, the CLI and the local-stack launcher of the live ML platform."""

__version__ = "0.1.0"
