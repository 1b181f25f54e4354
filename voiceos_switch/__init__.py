"""voiceos-switch: real-time AI voice agents on real phone lines."""

import os as _os

# numpy's BLAS spins a thread per core for every small matrix product. With
# the models' own threads on the same cores that multiplies the cost of a
# sentence embedding by thirty (measured: 27 ms on one thread, 750 ms with
# two threads contending); the bridge's numpy work is small and runs on one.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .agent import Agent  # noqa: E402
from .call import Call, Turn  # noqa: E402
from .errors import CallControlError, ConfigurationError, TransferError  # noqa: E402
from .providers.emotion import Emotion  # noqa: E402
from .tools import tool, transfer_to_human  # noqa: E402
from .variants import Variant  # noqa: E402

__all__ = [
    "Agent",
    "Call",
    "Emotion",
    "CallControlError",
    "ConfigurationError",
    "TransferError",
    "Turn",
    "Variant",
    "tool",
    "transfer_to_human",
]
__version__ = "0.1.0"
