"""Keep the loaded models out of the garbage collector's full passes.

The models a gateway loads at start are most of its Python objects, and they live until
the process ends or they are unloaded when idle. Each full collection (CPython runs one
every few tens of thousands of allocations, and a request makes hundreds) walked all of
them again: a pause that grows with the models, and a measurable share of every
request's CPU (issue 11). :func:`settle` moves everything alive after the preload into
the permanent generation (``gc.freeze``), where the collector no longer looks; objects
are still freed by reference counting as before. :func:`release` gives them back after
a model is unloaded, so that reference cycles among its objects can still be collected,
and settles again.
"""

from __future__ import annotations

import gc
import time

import structlog

log = structlog.get_logger(__name__)


def settle() -> None:
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info(
        "heap_settled",
        frozen_objects=gc.get_freeze_count(),
        ms=round((time.perf_counter() - started) * 1000, 1),
    )


def release() -> None:
    gc.unfreeze()
    settle()
