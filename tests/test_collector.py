"""The collector around large configurations: what lives on after bulk work is set aside,
and cycles dropped since are collected once what is set aside has grown by a quarter."""

from __future__ import annotations

import gc
import weakref

from edgeplane.collector import collector_paused, settle_collector


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_no_collection_runs_while_paused_and_the_collector_runs_again_after():
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_settling_sets_what_lives_on_aside_and_collects_dropped_cycles_once_it_has_grown_by_a_quarter():
    try:
        settle_collector()
        cycle = Cycle()
        dropped = weakref.ref(cycle)
        settle_collector()
        assert gc.get_freeze_count() > 0
        del cycle
        gc.collect()
        assert dropped() is not None, "set aside: no collection looks at it"
        grown = [[index] for index in range(gc.get_freeze_count() // 2)]
        settle_collector()
        assert dropped() is None, "what is set aside grew by more than a quarter: collected"
        del grown
    finally:
        gc.unfreeze()
