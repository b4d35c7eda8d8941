"""The model, loaded once per worker *child* process, on first use.

Never at import time: the prefork parent imports the task modules, and torch state (threads,
CUDA contexts) must not be created before the fork.
"""

from __future__ import annotations

import logging
import os
import threading

from service.core.settings import get_settings

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_model = None


def get_model():
    global _model
    if _model is None:
        with _lock:
            if _model is None:
                yield_cpu(get_settings().worker.model_nice)
                import namm

                path = get_settings().model.path
                logger.info("loading model %s", path or "(default)")
                _model = namm.load_model(path) if path else namm.load_model()
                logger.info("model %s loaded on %s", _model.name, _model.device)
    return _model


def yield_cpu(nice: int) -> None:
    """Lower this process's CPU priority to `nice` before torch starts its threads (on Linux the
    nice value is per thread, and threads inherit it from the one that creates them)."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
        logger.info("model worker nice %d -> %d (the API answers first)", current, nice)
