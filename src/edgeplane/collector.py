"""The cyclic garbage collector around large configurations, for every role.

Parsing, validating and compiling a config of 100,000 rules makes millions of objects
that live on; the collector would scan them again and again while they are made (a third
of the time, or more), and again at every later full collection. So bulk work runs with
the collector paused, and what lives on afterwards is set aside once. Nothing here knows
what the objects are.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """No collection while the block makes many objects that live on; what became garbage
    meanwhile is collected later (reference counting frees the rest at once)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


_baseline = 0  # objects set aside after the last full collection (0: none yet)


def settle_collector() -> None:
    """After bulk work (a compiled runtime, a loaded draft): set what lives on aside
    (`gc.freeze`), so that no later collection walks millions of long-lived objects again: at
    100,000 rules one full collection takes seconds, stalling everything the process does.
    What is set aside and later dropped is still freed by reference counting; only cycles
    among it wait, until what is set aside has grown by a quarter since the last full
    collection: then one runs (a one-rule change leaves about a hundred such objects)."""
    global _baseline
    gc.freeze()
    count = gc.get_freeze_count()
    if _baseline and count > _baseline * 5 // 4:
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        _baseline = gc.get_freeze_count()
    elif not _baseline or count < _baseline:
        _baseline = count
