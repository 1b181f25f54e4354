"""voiceos-switch: real-time AI voice agents on real phone lines."""

from .agent import Agent, CallControlError, ConfigurationError, TransferError
from .call import Call, Turn

__all__ = ["Agent", "Call", "CallControlError", "ConfigurationError", "TransferError", "Turn"]
__version__ = "0.1.0"
