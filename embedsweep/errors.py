"""Typed errors with stable codes. Configuration and start-up problems are exceptions; a failed
request is data (a record), never an exception."""

from __future__ import annotations

__all__ = ["ConfigError", "EmbedsweepError", "ModelError", "ServerError"]


class EmbedsweepError(Exception):
    """Base class; ``code`` is one of the stable reason / failure codes of ARCHITECTURE.md."""

    code: str = "unknown"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(EmbedsweepError):
    """Bad user input (sweep file, CLI argument): the CLI prints it on one line and exits 2."""

    code = "invalid_config"


class ModelError(EmbedsweepError):
    """A model reference that cannot be resolved or read (model_not_found, invalid_model_files)."""

    code = "invalid_model_files"


class ServerError(EmbedsweepError):
    """An engine server that could not start or died (startup_timeout, server_crashed, ...)."""

    code = "server_crashed"

    def __init__(self, message: str, *, code: str | None = None, transient: bool = False) -> None:
        super().__init__(message, code=code)
        self.transient = transient
