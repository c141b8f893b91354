"""A rule keeps its priority (and so its flows) across edits of the policy: adding,
removing or changing one rule rewrites that rule's flows only, on every switch."""

from __future__ import annotations

import copy

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from vfence.controller import pipeline
from vfence.controller.api import create_app
from vfence.controller.flows import Owner, cookie_owner

from .. import LOOPBACK
from .test_policy import FINANCE
from .test_trust import HV1, HV2, _connect, _service


def _ordered(prios: list[int]) -> bool:
    """First match wins: strictly descending, each rule with its priority and one below
    inside the rules band."""
    return all(a - b >= 2 for a, b in zip(prios, prios[1:], strict=False)) and all(
        pipeline.RULE_PRIORITY_FLOOR <= p <= pipeline.RULE_PRIORITY_TOP for p in prios)


@given(st.lists(st.integers(0, 40), unique=True, max_size=30),
       st.lists(st.integers(0, 40), unique=True, max_size=30))
def test_kept_priorities_keep_the_order_and_the_most_rules(before, after):
    old = dict(zip(map(str, before), pipeline.spread_rule_priorities(len(before)), strict=True))
    names = list(map(str, after))
    prios = pipeline.keep_rule_priorities(names, old)
    assert len(prios) == len(names) and _ordered(prios)
    kept = [n for n, p in zip(names, prios, strict=True) if old.get(n) == p]
    # as many rules keep their priority as can while staying in order: the longest run
    # of old rules whose old priorities still descend in the new order
    seq = [old[n] for n in names if n in old]
    best = [1] * len(seq)
    for i in range(len(seq)):
        for j in range(i):
            if seq[j] > seq[i]:
                best[i] = max(best[i], best[j] + 1)
    assert len(kept) == max(best, default=0)


def test_a_full_house_of_rules_still_fits():
    prios = pipeline.spread_rule_priorities(pipeline.MAX_RULES)
    assert _ordered(prios) and len(set(prios)) == pipeline.MAX_RULES
    with pytest.raises(ValueError):
        pipeline.spread_rule_priorities(pipeline.MAX_RULES + 1)


def _rule_flows(changes: dict) -> int:
    return sum(h["add"] + h["delete"] for h in changes.values())


@pytest.fixture
def finance(sqlite_url):
    service, rec = _service(sqlite_url)
    _connect(service, HV1, {})
    _connect(service, HV2, {})
    client = TestClient(create_app(service), base_url=LOOPBACK)
    assert client.put("/v1/policy", json=FINANCE).status_code == 200
    return service, client


def _one_rules_flows(service, name: str) -> int:
    """How many flows one rule has on every switch together."""
    prio = next(r.priority for r in service.state.policy.rules if r.name == name)
    return sum(1 for flows in service.switches.installed.values() for f in flows
               if cookie_owner(f.cookie) == (Owner.RULE, prio))


@pytest.mark.parametrize("where", [0, 2, 5])
def test_adding_removing_or_changing_one_rule_rewrites_that_rule_only(finance, where):
    service, client = finance
    doc = copy.deepcopy(FINANCE)
    new = {"name": "new-rule", "from": "ops", "to": "finance-api", "protocol": "tcp",
           "ports": "9443", "action": "allow"}
    doc["rules"].insert(where, new)
    dry = client.put("/v1/policy", params={"dry_run": True}, json=doc).json()
    added = client.put("/v1/policy", json=doc).json()
    assert added["hosts"] == dry["hosts"]
    own = _one_rules_flows(service, "new-rule")
    assert own > 0 and _rule_flows(added["hosts"]) == own, added["hosts"]
    # change it: its own flows go and come, nothing else
    doc["rules"][where]["ports"] = "9444"
    changed = client.put("/v1/policy", json=doc).json()
    assert 0 < _rule_flows(changed["hosts"]) <= 2 * own
    # remove it: the document is what it was, and so are the other rules' flows
    removed = client.put("/v1/policy", json=FINANCE).json()
    assert _rule_flows(removed["hosts"]) == own


def test_rule_priorities_survive_a_restart(finance, sqlite_url):
    from vfence.controller.service import Service

    service, client = finance
    doc = copy.deepcopy(FINANCE)
    doc["rules"].insert(0, {"name": "top", "from": "ops", "to": "any", "action": "deny"})
    client.put("/v1/policy", json=doc)
    again = Service(service.sessions)
    assert [(r.name, r.priority) for r in again.state.policy.rules] == [
        (r.name, r.priority) for r in service.state.policy.rules]
