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


def settle_collector() -> None:
    """After bulk work that replaced much of what lives on: collect the cycles it left once,
    now, and set what lives on aside (`gc.freeze`), so that no later collection walks
    millions of long-lived objects again: at 100,000 rules the first collections after a
    compile took seconds each. (What is set aside and later dropped is still freed by
    reference counting; only its cycles wait for the next settle.)"""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
