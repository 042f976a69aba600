"""Money holes found by the adversarial probe: a provider's usage is not trusted blindly, bad cloud
settings are refused before anything is booked, and config numbers must be finite and in range.

Every cloud here is the scripted FaultServer on loopback (no model runs)."""

import json
import math

import pytest

import store
from cloud.budget import Budget, Caps
from cloud.client import make_cloud
from cloud.pricing import Price
from edge_agent.errors import BudgetDenied, CloudError, ConfigError
from store import ledger
from tests.conftest import run_cli

MSGS = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2 + 1?"}]
HONEST = {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57}


@pytest.fixture
def session(db):
    return store.new_session(db, problem="p", model="m", model_path="x", policy="every-k", settings={})


def _spent(db) -> int:
    return db.execute("SELECT COALESCE(SUM(cost_nusd), 0) FROM cloud_calls").fetchone()[0]


def _one_line(text: str) -> bool:
    return len(text.strip().splitlines()) == 1


# -- 1. a provider's usage is checked ---------------------------------------------------------------

@pytest.mark.parametrize("usage", [
    {"prompt_tokens": 50, "completion_tokens": -100_000_000},  # the probe's: booked -$876
    {"prompt_tokens": -5, "completion_tokens": 7},
    {"prompt_tokens": 1.5, "completion_tokens": 7},
    {"prompt_tokens": "12", "completion_tokens": 7},
    {"prompt_tokens": 50, "completion_tokens": True},
    {"prompt_tokens": 10**12, "completion_tokens": 7},  # absurd: no call reads a trillion tokens
    {"prompt_tokens": 50, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 80}},  # cached > input
    {"prompt_tokens": 50, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": -1}},
], ids=["negative-out", "negative-in", "fraction", "string", "bool", "absurd", "cached-over-input", "cached-negative"])
def test_impossible_usage_is_a_malformed_reply_costed_at_its_reservation(fault_server, db, session, usage):
    server = fault_server("usage")
    server.usage = usage
    cloud = make_cloud("openai:m", base_url=server.url + "/v1", price=Price(1.0, 2.0), max_retries=0)
    with pytest.raises(CloudError) as e:
        cloud.call(MSGS, max_tokens=32, budget=Budget(db, Caps(), session), purpose="rewrite_step")
    assert e.value.kind == "malformed" and "impossible usage" in str(e.value)
    [row] = store.cloud_calls(db, session)
    assert row["status"] == "malformed" and row["cost_nusd"] == row["reserved_nusd"] > 0
    assert (row["input_tokens"], row["output_tokens"]) == (0, 0)
    assert not cloud.breaker.allow()  # like any malformed reply


@pytest.mark.parametrize("usage", [
    {"input_tokens": 50, "output_tokens": -7},
    {"input_tokens": "12", "output_tokens": 7},
    {"input_tokens": 5, "output_tokens": 7, "cache_read_input_tokens": -100},
    {"input_tokens": 5, "output_tokens": 7.5},
], ids=["negative-out", "string", "negative-cache-read", "fraction"])
def test_anthropic_impossible_usage_is_a_malformed_reply(fault_server, db, session, usage):
    server = fault_server("messages")
    server.usage = usage
    cloud = make_cloud("anthropic:m", base_url=server.url, price=Price(1.0, 2.0), max_retries=0)
    with pytest.raises(CloudError) as e:
        cloud.call(MSGS, max_tokens=32, budget=Budget(db, Caps(), session), purpose="rewrite_step")
    assert e.value.kind == "malformed"
    [row] = store.cloud_calls(db, session)
    assert row["status"] == "malformed" and row["cost_nusd"] == row["reserved_nusd"] > 0


def test_negative_usage_cannot_lift_a_day_cap(fault_server, db, session):
    """The probe's sequence: a reply with -1e8 output tokens, then honest spending against a $0.002 day cap."""
    server = fault_server("usage")
    server.usage = {"prompt_tokens": 50, "completion_tokens": -100_000_000}
    cloud = make_cloud("openai:m", base_url=server.url + "/v1", price=Price(1.0, 2.0), max_retries=0, cooldown_s=0)
    budget = Budget(db, Caps(day_usd=0.002), session)
    with pytest.raises(CloudError):
        cloud.call(MSGS, max_tokens=32, budget=budget, purpose="rewrite_step")
    assert _spent(db) > 0
    server.usage = HONEST
    with pytest.raises(BudgetDenied) as denied:
        for _ in range(200):  # each honest call costs $0.000064: the cap must stop them
            cloud.call(MSGS, max_tokens=32, budget=budget, purpose="rewrite_step")
    assert denied.value.scope == "day"
    assert 0 <= _spent(db) <= 2_000_000
    assert all(r["cost_nusd"] >= 0 for r in store.cloud_calls(db, session))


def test_usage_above_the_reservation_is_booked_at_it_as_an_overrun(fault_server, db, session):
    """The probe's: 5M prompt tokens against a $0.0004 reservation was booked at $2.97, over --max-cost 0.01."""
    server = fault_server("usage")
    server.usage = {"prompt_tokens": 5_000_000, "completion_tokens": 7}
    cloud = make_cloud("openai:local", base_url=server.url + "/v1", max_retries=0)  # priced like DeepSeek-R1
    reply = cloud.call(MSGS, max_tokens=32, budget=Budget(db, Caps(session_usd=0.01), session), purpose="rewrite_step")
    [row] = store.cloud_calls(db, session)
    assert row["status"] == "overrun" and row["cost_nusd"] == row["reserved_nusd"] > 0
    assert "more than the" in row["error"] and "$2.75" in row["error"]  # what the provider claimed
    assert row["input_tokens"] == 5_000_000  # the claim is kept as reported
    assert reply.status == "overrun" and reply.cost_usd == row["reserved_nusd"] / 1e9
    assert reply.overrun_usd == pytest.approx(2.750015 - row["reserved_nusd"] / 1e9)
    assert _spent(db) <= 10_000_000  # the session cap holds
    assert reply.text  # the reply itself is used: it was paid for


def test_honest_usage_is_booked_as_is(fault_server, db, session):
    server = fault_server("usage")
    server.usage = {**HONEST, "prompt_tokens_details": {"cached_tokens": 10}}
    cloud = make_cloud("openai:m", base_url=server.url + "/v1", price=Price(1.0, 2.0, cached_input=0.5), max_retries=0)
    reply = cloud.call(MSGS, max_tokens=32, budget=Budget(db, Caps(), session), purpose="rewrite_step")
    [row] = store.cloud_calls(db, session)
    assert (row["status"], row["cost_nusd"], row["error"]) == ("ok", 40 * 1000 + 10 * 500 + 7 * 2000, None)
    assert (reply.status, reply.overrun_usd) == ("ok", 0.0)


def _reserve(db, sid, amount, caps=None):
    return ledger.reserve(db, session_id=sid, purpose="x", provider="p", model="m", amount_nusd=amount,
                          caps_nusd=caps or {"session": None, "day": None, "month": None})


def _settle(db, rid, sid, cost, status="ok"):
    ledger.settle(db, rid, session_id=sid, step_idx=0, purpose="x", provider="p", model="m", input_tokens=0,
                  output_tokens=0, cached_tokens=0, cache_write_tokens=0, cost_nusd=cost, latency_s=0.0, status=status)


def test_the_ledger_never_books_below_zero_or_above_the_reservation(db, session):
    _settle(db, _reserve(db, session, 1000), session, -5)
    _settle(db, _reserve(db, session, 1000), session, 1.5)
    _settle(db, _reserve(db, session, 1000), session, 10**15)
    rows = store.cloud_calls(db, session)
    assert [r["cost_nusd"] for r in rows] == [1000, 1000, 1000]
    assert [r["status"] for r in rows] == ["ok", "ok", "overrun"]
    assert all(r["error"] for r in rows)


def test_a_negative_row_from_an_older_version_counts_at_its_reservation(db, session):
    _settle(db, _reserve(db, session, 1000), session, 700)
    db.execute("UPDATE cloud_calls SET cost_nusd = -876000000000")  # what the old code booked
    db.conn.commit()
    caps = {"session": None, "day": 2000, "month": None}
    assert isinstance(_reserve(db, session, 1001, caps), ledger.Denial)  # 1000 (its reservation) + 1001 > 2000
    assert ledger.spend(db)["today_nusd"] == 1000


# -- 8. bad cloud settings are refused before anything is booked ------------------------------------

BAD_URLS = ["notaurl", "ftp://example.com/v1", "http://[::1", "http://", "http://1.2.3.999/v1",
            "https://exa mple.com/v1", "http://example.com:99999/v1"]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("url", BAD_URLS)
def test_a_bad_base_url_is_refused_when_the_cloud_is_made(monkeypatch, provider, url):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-key")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-key")
    with pytest.raises(ConfigError) as e:
        make_cloud(f"{provider}:m", base_url=url, price=Price(1.0, 2.0))
    assert _one_line(str(e.value)) and "http:// or https://" in str(e.value) and repr(url) in str(e.value)


def test_a_bad_base_url_from_the_environment_is_refused(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-key")
    monkeypatch.setenv("OPENAI_BASE_URL", "localhost:8080/v1")
    with pytest.raises(ConfigError, match="OPENAI_BASE_URL"):
        make_cloud("openai:m", price=Price(1.0, 2.0))


@pytest.mark.parametrize("setting, value", [
    ("timeout_s", -1), ("timeout_s", 0), ("timeout_s", math.nan), ("timeout_s", math.inf),
    ("max_retries", -5), ("max_retries", 1.5), ("max_retries", True),
    ("cooldown_s", -1), ("cooldown_s", math.nan),
])
def test_bad_transport_settings_are_refused_when_the_cloud_is_made(fault_server, setting, value):
    server = fault_server("ok")
    with pytest.raises(ConfigError) as e:
        make_cloud("openai:m", base_url=server.url + "/v1", price=Price(1.0, 2.0), **{setting: value})
    assert f"[cloud] {setting}" in str(e.value) and _one_line(str(e.value))
    assert server.requests == []


def test_a_request_that_never_left_the_process_costs_nothing(fault_server, db, session):
    server = fault_server("ok")
    cloud = make_cloud("openai:m", base_url=server.url + "/v1", price=Price(1.0, 2.0), max_retries=0)
    # a URL httpx cannot request, past the up-front check (as a future SDK or transport might build one)
    cloud.adapter.client = cloud.adapter.client.with_options(base_url=server.url.replace("http", "ftp") + "/v1")
    with pytest.raises(CloudError) as e:
        cloud.call(MSGS, max_tokens=32, budget=Budget(db, Caps(), session), purpose="rewrite_step")
    assert e.value.kind == "not_sent" and "never sent" in str(e.value)
    [row] = store.cloud_calls(db, session)
    assert (row["status"], row["cost_nusd"]) == ("not_sent", 0)
    assert server.requests == []


def test_a_redirect_to_an_unsendable_url_is_still_costed_at_the_reservation(fault_server, db, session):
    """The same httpx error after a redirect proves nothing: the first request reached the server."""
    server = fault_server("redirect")
    cloud = make_cloud("openai:m", base_url=server.url + "/v1", price=Price(1.0, 2.0), max_retries=0)
    with pytest.raises(CloudError) as e:
        cloud.call(MSGS, max_tokens=32, budget=Budget(db, Caps(), session), purpose="rewrite_step")
    assert e.value.kind != "not_sent"
    assert len(server.requests) == 1
    [row] = store.cloud_calls(db, session)
    assert row["cost_nusd"] == row["reserved_nusd"] > 0


def test_a_read_an_adapter_cannot_send_costs_nothing(fault_server, db, session):
    """A read through a cloud with no completions endpoint (Anthropic) fails in this process: booked at $0."""
    from cloud.reads import read

    server = fault_server("messages")
    cloud = make_cloud("anthropic:claude-haiku-4-5", base_url=server.url, max_retries=0)
    with pytest.raises(CloudError) as e:
        read(cloud, list(range(100, 500)), budget=Budget(db, Caps(), session))
    assert e.value.kind == "not_sent" and "never sent" in str(e.value) and _one_line(str(e.value))
    [row] = store.cloud_calls(db, session)
    assert (row["purpose"], row["status"], row["cost_nusd"]) == ("read", "not_sent", 0) and row["reserved_nusd"] > 0
    assert server.requests == [] and _spent(db) == 0


def test_a_read_mode_the_cloud_cannot_do_is_refused_before_anything_starts(tmp_path, fault_server, monkeypatch):
    server = fault_server("messages")
    _config(tmp_path, '[cloud]\nread = "echo"\n')
    script = tmp_path / "steps.json"
    script.write_text(json.dumps(["2 + 1 = 3.", "So the answer is \\boxed{3}."]))
    db_path = tmp_path / "solve.db"
    r = run_cli("solve", "What is 2 + 1?", "--model", f"script:{script}", "--policy", "verify-repair",
                "--cloud", "anthropic:claude-haiku-4-5", "--cloud-base-url", server.url, "--db", str(db_path), timeout=120)
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert _one_line(err) and err.startswith("Error:") and "Traceback" not in err and 'read = "echo"' in err, err
    assert not db_path.exists() and server.requests == []
    # OpenAI's own API gives no prompt log-probs either; an endpoint that echoes them may read by echo
    from cloud.reads import check_read_setting

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match="judge"):
        check_read_setting(make_cloud("openai:gpt-4o-mini", api_key="sk-test-not-a-key"), "echo")
    check_read_setting(make_cloud("openai:local", base_url=server.url + "/v1", price=Price(1.0, 2.0)), "echo")
    for setting in ("auto", "judge", "off"):
        check_read_setting(make_cloud("anthropic:claude-haiku-4-5", base_url=server.url), setting)


def _config(tmp_path, text: str) -> None:
    """The config file where the CLI looks for it (conftest points XDG_CONFIG_HOME at tmp_path/config)."""
    path = tmp_path / "config" / "edge-agent" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _every_k_solve(tmp_path, config, *args, env=None):
    """``solve`` of a scripted two-step problem with every-k and the cloud ``openai:m``, under ``config``."""
    _config(tmp_path, config)
    script = tmp_path / "steps.json"
    script.write_text(json.dumps(["2 + 1 = 3.", "So the answer is \\boxed{3}."]))
    db_path = tmp_path / "solve.db"
    return run_cli("solve", "What is 2 + 1?", "--model", f"script:{script}", "--policy", "every-k", "--cloud",
                   "openai:m", "--db", str(db_path), *args, env=env, timeout=120), db_path


@pytest.mark.parametrize("args, config", [
    (["--cloud-base-url", "notaurl"], ""),
    (["--cloud-base-url", "ftp://example.com/v1"], ""),
    (["--cloud-base-url", "http://[::1"], ""),
    ([], "[cloud]\ntimeout_s = -1\n"),
    ([], "[cloud]\ntimeout_s = nan\n"),
    ([], "[cloud]\nmax_retries = -5\n"),
], ids=["notaurl", "ftp", "ipv6-unclosed", "timeout-negative", "timeout-nan", "retries-negative"])
def test_solve_with_bad_cloud_settings_exits_2_and_books_nothing(tmp_path, fault_server, args, config):
    server = fault_server("ok")
    base = [] if args else ["--cloud-base-url", server.url + "/v1"]
    r, db_path = _every_k_solve(tmp_path, config, "--price-in", "1", "--price-out", "2", *base, *args,
                                env={"OPENAI_API_KEY": "sk-test-not-a-key"})
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert _one_line(err) and err.startswith("Error:") and "Traceback" not in err
    assert not db_path.exists()  # refused before the database is touched: nothing booked
    assert server.requests == []


@pytest.mark.parametrize("args, config", [
    (["--price-in", "1e6", "--price-out", "2"], ""),
    (["--price-in", "1", "--price-out", "1e300"], ""),  # the probe's: an OverflowError, a session left running
    ([], '[prices."m"]\ninput = 1e300\noutput = 2\n'),
    ([], '[prices."m"]\ninput = 1\noutput = 2\ncached_input = 1e6\n'),
], ids=["flag-1e6", "flag-1e300", "config-1e300", "config-cached-1e6"])
def test_a_price_no_model_costs_is_refused_in_one_line_before_anything_starts(tmp_path, fault_server, args, config):
    server = fault_server("ok")
    r, db_path = _every_k_solve(tmp_path, config, "--cloud-base-url", server.url + "/v1", *args)
    err = r.stderr.decode()
    assert r.returncode == 2, err
    assert _one_line(err) and err.startswith("Error:") and "Traceback" not in err and "10,000" in err, err
    assert not db_path.exists()  # no session, let alone one left running
    assert server.requests == []
    with pytest.raises(ConfigError, match="--price-in"):
        Price(1.0, 1e6)


# -- 5. config numbers ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, key, wants", [
    ("[budget]\nmax_cost_day = nan\n", "budget.max_cost_day", ">= 0 and finite, in USD"),
    ("[budget]\nmax_cost_month = inf\n", "budget.max_cost_month", ">= 0 and finite, in USD"),
    ("[budget]\nmax_cost_session = -inf\n", "budget.max_cost_session", ">= 0 and finite, in USD"),
    ("[cloud]\ntimeout_s = -1\n", "cloud.timeout_s", "> 0 and finite, in seconds"),
    ("[cloud]\ntimeout_s = 0\n", "cloud.timeout_s", "> 0 and finite, in seconds"),
    ("[cloud]\ntimeout_s = nan\n", "cloud.timeout_s", "> 0 and finite, in seconds"),
    ("[cloud]\nmax_retries = -5\n", "cloud.max_retries", "integer >= 0"),
    ("[cloud]\ncooldown_s = nan\n", "cloud.cooldown_s", ">= 0 and finite, in seconds"),
    ("[cloud]\ncooldown_s = -1\n", "cloud.cooldown_s", ">= 0 and finite, in seconds"),
    ("[cloud]\nbase_url = \"notaurl\"\n", "cloud.base_url", "http:// or https://"),
    ("[prices.\"m\"]\ninput = nan\noutput = 1\n", "prices.m.input", ">= 0 and finite, in USD per 1M tokens"),
    ("[prices.\"m\"]\ninput = 1\noutput = inf\n", "prices.m.output", ">= 0 and finite, in USD per 1M tokens"),
    ("[prices.\"m\"]\ninput = \"0.5\"\noutput = 1\n", "prices.m.input", ">= 0 and finite, in USD per 1M tokens"),
    ("[prices.\"m\"]\ninput = true\noutput = 1\n", "prices.m.input", ">= 0 and finite, in USD per 1M tokens"),
])
def test_config_refuses_numbers_that_are_not_finite_or_in_range(tmp_path, text, key, wants):
    from edge_agent.config import load_config

    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert _one_line(msg) and key in msg and wants in msg


def test_config_accepts_sane_numbers(tmp_path):
    from edge_agent.config import load_config

    path = tmp_path / "c.toml"
    path.write_text('[cloud]\ntimeout_s = 0.5\nmax_retries = 0\ncooldown_s = 0\nbase_url = "http://127.0.0.1:8080/v1"\n'
                    '[budget]\nmax_cost_day = 0\nmax_cost_month = 1e300\n[prices."m"]\ninput = 0\noutput = 2\n')
    cfg = load_config(path)
    assert cfg.cloud["timeout_s"] == 0.5 and cfg.budget["max_cost_month"] == 1e300
    assert Caps(day_usd=cfg.budget["max_cost_day"], month_usd=cfg.budget["max_cost_month"]).nusd()["month"] > 0


@pytest.mark.parametrize("value", [math.nan, math.inf, -0.01, True])
def test_caps_and_prices_refuse_values_that_are_not_money(value):
    with pytest.raises(ConfigError, match="finite number of USD"):
        Caps(day_usd=value)
    if value is not True:
        with pytest.raises(ConfigError, match="--price-in"):  # a ConfigError: the CLI prints one line
            Price(value, 1.0)


def test_cost_json_with_a_nan_cap_exits_2_with_one_line(tmp_path):
    import os

    store.open_db(os.environ["EDGE_AGENT_DB"]).close()  # a database exists: only the config can fail
    _config(tmp_path, "[budget]\nmax_cost_day = nan\n")
    r = run_cli("cost", "--json", timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 2, r.stdout
    assert _one_line(err) and "budget.max_cost_day" in err and "finite" in err
    assert b"NaN" not in r.stdout


def test_doctor_json_stays_json_with_a_nan_cap(tmp_path):
    _config(tmp_path, "[budget]\nmax_cost_day = nan\n")
    script = tmp_path / "steps.json"
    script.write_text(json.dumps(["\\boxed{3}"]))
    r = run_cli("doctor", "--json", "--offline", "--model", f"script:{script}", timeout=60)

    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    out = json.loads(r.stdout, parse_constant=no_constants)
    [config] = [c for c in out["checks"] if c["name"] == "config"]
    assert config["level"] == "fail" and "budget.max_cost_day" in config["detail"]
    assert r.returncode == 1
