"""Worker threads for models, at a lower CPU priority than the event loop.

Speech recognition, the language model and neural TTS keep both cores busy
for hundreds of milliseconds at a time. Linux schedules threads by their own
nice value, and the threads a library starts inherit it from the thread that
starts them, so a model run on a niced worker leaves the event loop (which
paces every call's audio) first in line for the CPU.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

#: nice value of model worker threads (the event loop stays at the process's)
MODEL_NICENESS = 10


def _lower_priority() -> None:
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + MODEL_NICENESS))
    except (OSError, AttributeError):
        pass  # not Linux, or not permitted: run at normal priority


def model_executor(name: str) -> ThreadPoolExecutor:
    """One worker thread for one model, niced below the event loop."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=_lower_priority)
