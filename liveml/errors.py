"""Errors users see: each one says what went wrong and the next step, never a bare stack trace."""


class LivemlError(Exception):
    """Base class; the CLI prints these as one clear message and exits non-zero."""

    exit_code = 1


class ConfigError(LivemlError):
    """The config file, a variable or an argument is wrong; the message names the file and the field."""

    exit_code = 2


class PrerequisiteError(LivemlError):
    """Something the platform needs is not installed (Java, Maven, a jar, a Debian package)."""

    exit_code = 3


class PortInUseError(LivemlError):
    """A port we need is held by a process we did not start."""

    exit_code = 4


class ServiceError(LivemlError):
    """A service failed to start, is unhealthy, or is not reachable."""

    exit_code = 5
