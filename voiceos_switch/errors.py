"""The errors the package raises at its users, in one module below
everything (the SDK, the providers and the controllers all raise them)."""

from __future__ import annotations


class ConfigurationError(ValueError):
    """The agent cannot run as configured; the message says what to change."""


class ControlError(RuntimeError):
    """The PBX's control connection (AMI, the Event Socket) refused a
    command or could not be reached."""


class CallControlError(RuntimeError):
    """A call-control action (a transfer, a recording) could not be carried out."""


class TransferError(CallControlError):
    pass
