"""Budget properties: whatever the prices, token counts, caps and call sequence, settled spend never
exceeds a cap; a call settled after midnight stays in the day it was reserved in."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import store
from cloud.pricing import Price, cost_nusd, worst_case_nusd
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
