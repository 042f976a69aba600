"""Budget properties: whatever the prices, token counts, caps and call sequence, settled spend never
exceeds a cap; a call settled after midnight stays in the day it was reserved in."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import store
from cloud.adapters import RawReply
from cloud.breaker import CircuitBreaker
from cloud.budget import Budget, Caps
from cloud.client import Cloud
from cloud.pricing import Price, cost_nusd, worst_case_nusd
from edge_agent.errors import BudgetDenied, CloudError
from store import ledger

prices = st.builds(
    Price,
    input=st.floats(0, 100, allow_nan=False),
    output=st.floats(0, 200, allow_nan=False),
    cached_input=st.none() | st.floats(0, 50, allow_nan=False),
)
calls = st.lists(
    st.tuples(st.integers(1, 20_000), st.integers(1, 4_000), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)),
    min_size=1, max_size=25,
)


def _settle(db, rid, sid, cost):
    ledger.settle(db, rid, session_id=sid, step_idx=0, purpose="rewrite_step", provider="p", model="m",
                  input_tokens=0, output_tokens=0, cached_tokens=0, cache_write_tokens=0, cost_nusd=cost,
                  latency_s=0.0, status="ok")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(price=prices, seq=calls, session_cap=st.integers(0, 10**8), day_cap=st.integers(0, 10**8))
def test_settled_spend_never_exceeds_any_cap(tmp_path_factory, price, seq, session_cap, day_cap):
    db = store.open_db(tmp_path_factory.mktemp("b") / "b.db")
    sid = store.new_session(db, problem="p", model="m", model_path="x", policy="p", settings={})
    caps = {"session": session_cap, "day": day_cap, "month": None}
    for inp, max_out, f_in, f_out, f_cached in seq:
        worst = worst_case_nusd(price, input_tokens=inp, max_tokens=max_out)
        got = ledger.reserve(db, session_id=sid, purpose="rewrite_step", provider="p", model="m",
                             amount_nusd=worst, caps_nusd=caps)
        if isinstance(got, ledger.Denial):
            assert got.committed_nusd + got.needed_nusd > got.cap_nusd
            continue
        used_in = int(inp * f_in)
        actual = cost_nusd(price, input_tokens=used_in, output_tokens=int(max_out * f_out),
                           cached_tokens=int(used_in * f_cached))
        assert actual <= worst  # the reservation really is the worst case
        _settle(db, got, sid, actual)
    spent = db.execute("SELECT COALESCE(SUM(cost_nusd), 0) FROM cloud_calls").fetchone()[0]
    assert spent <= session_cap and spent <= day_cap
    assert db.execute("SELECT COUNT(*) FROM budget_reservations WHERE status = 'open'").fetchone()[0] == 0
    db.close()


# what a provider may put in a usage field: honest counts, negative or absurd ones, fractions, strings, nothing
token_values = st.one_of(
    st.integers(0, 5_000),
    st.integers(-10**12, 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["12", "", None, True, 1.5]),
)
plausible = st.fixed_dictionaries(  # more input than the reservation allows for is an overrun
    {"input_tokens": st.integers(0, 8_000), "output_tokens": st.integers(0, 5_000)},
    optional={"cached_tokens": st.integers(0, 100), "cache_write_tokens": st.integers(0, 100)},
)
wild = st.fixed_dictionaries(
    {"input_tokens": token_values, "output_tokens": token_values},
    optional={"cached_tokens": token_values, "cache_write_tokens": token_values},
)
usages = st.one_of(st.none(), plausible, plausible, wild)
cap_nusd = st.none() | st.integers(0, 10**10) | st.integers(10**8, 10**10)  # room for a few calls, often
cloud_calls = st.lists(st.tuples(st.integers(1, 4_000), st.integers(1, 4_000), usages), min_size=1, max_size=20)


class _ScriptedAdapter:
    """An adapter whose replies carry the given usages, in order: the budget and the ledger are under test."""

    provider, model, base_url = "p", "m", None

    def __init__(self, usages):
        self.usages = list(usages)

    def complete(self, messages, *, max_tokens, stop=(), top_logprobs=0):
        return RawReply("a step", self.usages.pop(0))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(price=prices, seq=cloud_calls, session_cap=cap_nusd, day_cap=cap_nusd)
def test_whatever_usage_a_provider_reports_spend_stays_within_every_cap_and_above_zero(
        tmp_path_factory, price, seq, session_cap, day_cap):
    db = store.open_db(tmp_path_factory.mktemp("c") / "c.db")
    sid = store.new_session(db, problem="p", model="m", model_path="x", policy="p", settings={})
    caps = Caps(session_usd=None if session_cap is None else session_cap / 1e9,
                day_usd=None if day_cap is None else day_cap / 1e9)
    cloud = Cloud(_ScriptedAdapter(u for _, _, u in seq), price, CircuitBreaker(cooldown_s=0))
    budget = Budget(db, caps, sid)
    for size, max_tokens, _ in seq:
        try:
            cloud.call([{"role": "user", "content": "x" * size}], max_tokens=max_tokens, budget=budget,
                       purpose="rewrite_step")
        except BudgetDenied:
            cloud.adapter.usages.pop(0)  # nothing was sent: that reply is never read
        except CloudError as e:
            assert e.kind == "malformed"
    spent = db.execute("SELECT COALESCE(SUM(cost_nusd), 0) FROM cloud_calls").fetchone()[0]
    assert 0 <= spent
    assert all(spent <= cap for cap in caps.nusd().values() if cap is not None)
    for row in store.cloud_calls(db, sid):
        assert 0 <= row["cost_nusd"] <= row["reserved_nusd"]
        if row["status"] == "ok":
            assert row["cost_nusd"] == cost_nusd(price, input_tokens=row["input_tokens"],
                                                 output_tokens=row["output_tokens"], cached_tokens=row["cached_tokens"],
                                                 cache_write_tokens=row["cache_write_tokens"])
    assert db.execute("SELECT COUNT(*) FROM budget_reservations WHERE status = 'open'").fetchone()[0] == 0
    db.close()


def test_a_call_settled_after_midnight_counts_in_the_day_it_was_reserved(db):
    sid = store.new_session(db, problem="p", model="m", model_path="x", policy="p", settings={})
    caps = {"session": None, "day": 1000, "month": None}
    late = "2026-11-23T23:59:59.900+00:00"
    rid = ledger.reserve(db, session_id=sid, purpose="x", provider="p", model="m", amount_nusd=800, caps_nusd=caps, ts=late)
    assert isinstance(rid, str)
    # an open reservation holds the day's cap
    denied = ledger.reserve(db, session_id=sid, purpose="x", provider="p", model="m", amount_nusd=300, caps_nusd=caps, ts=late)
    assert isinstance(denied, ledger.Denial) and denied.scope == "day"
    _settle(db, rid, sid, 700)  # settled "now", after midnight
    [row] = store.cloud_calls(db, sid)
    assert row["created_at"].startswith("2026-11-23")
    next_day = "2026-11-24T00:00:01.000+00:00"
    assert isinstance(ledger.reserve(db, session_id=sid, purpose="x", provider="p", model="m", amount_nusd=900,
                                     caps_nusd=caps, ts=next_day), str)


def test_stale_reservation_of_a_dead_process_is_reclaimed_at_full_amount(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "s.db"
    db = store.open_db(path)
    sid = store.new_session(db, problem="p", model="m", model_path="x", policy="p", settings={})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    rid = ledger.reserve(db, session_id=sid, purpose="x", provider="p", model="m", amount_nusd=1234,
                         caps_nusd={"session": None, "day": None, "month": None})
    db.execute("UPDATE budget_reservations SET pid = ? WHERE id = ?", [int(dead.stdout), rid])
    db.conn.commit()
    db.close()
    db = store.open_db(path)  # reopening reclaims it
    [row] = store.cloud_calls(db, sid)
    assert (row["status"], row["cost_nusd"]) == ("reclaimed", 1234)
    assert db.execute("SELECT status FROM budget_reservations WHERE id = ?", [rid]).fetchone()[0] == "settled"


def test_rounding_never_lifts_actual_cost_above_the_reservation():
    # a case hypothesis found: two tiny components each rounded up would exceed the single-rounded worst case
    price = Price(input=2.853908822917947e-48, output=0.0)
    worst = worst_case_nusd(price, input_tokens=2, max_tokens=1)
    assert cost_nusd(price, input_tokens=2, output_tokens=0, cached_tokens=1) <= worst
    assert cost_nusd(Price(1.0, 2.0), input_tokens=1_000_000, output_tokens=500_000) == 2_000_000_000  # $2.00 exactly
