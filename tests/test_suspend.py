"""Rule steps that wait: the chain stops at the step, resumes right after it, and never
runs an earlier step twice; a chain where nothing waits stays one synchronous call."""

from __future__ import annotations

import asyncio

from edgeplane.lang.compile import CompileContext, Forward, LocalResponse, Suspend, compile_rules
from edgeplane.model.config import RateLimitAction, Rule
from edgeplane.node.request import Request


def chain(waiting_step):
    """Rules: count (rule 0), wait (rule 1, then set-var), decide by the variable (rules 2, 3)."""
    ran: list[str] = []

    def step_for(action: RateLimitAction):
        if action.policy == "count":
            return lambda request, ops: ran.append("count")
        return waiting_step
    context = CompileContext(node_actions={RateLimitAction: step_for})
    rules = [Rule(actions=[{"rate-limit": {"policy": "count"}}]),
             Rule(actions=[{"rate-limit": {"policy": "wait"}}, {"set-var": {"name": "after", "value": "yes"}}]),
             Rule(conditions=[{"var": "var", "name": "after", "op": "eq", "values": ["yes"]}],
                  actions=[{"proxy": {"upstream": "up"}}]),
             Rule(actions=[{"respond": {"body": "not resumed"}}])]
    return compile_rules(rules, {"up": "UPSTREAM"}, context), ran


def test_a_waiting_step_suspends_and_the_chain_resumes_after_it():
    suspended = Suspend(asyncio.sleep(0))
    route, ran = chain(lambda request, ops: suspended)
    request = Request()
    label, outcome = route(request, [])
    assert (label, outcome) == (1, suspended)
    suspended.waiting.close()
    assert suspended.resume() == (2, Forward("UPSTREAM"))  # set-var ran, then the proxy rule
    assert ran == ["count"]  # rule 0 ran once, before the wait only


def test_a_step_that_does_not_wait_keeps_the_chain_synchronous():
    route, ran = chain(lambda request, ops: None)
    assert route(Request(), []) == (2, Forward("UPSTREAM"))
    assert ran == ["count"]


def test_a_waiting_step_can_decide_instead():
    refused = LocalResponse(429)
    suspended = Suspend(asyncio.sleep(0, result=refused))
    route, _ = chain(lambda request, ops: suspended)
    label, outcome = route(Request(), [])
    assert outcome is suspended and suspended.label == 1
    assert asyncio.run(suspended.waiting) is refused  # the exchange answers this, with label 1
