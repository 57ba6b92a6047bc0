"""Daily spend and caps against a real Redis."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
import redis

from router_jobs.admission.budgets import Budgets, cost_of
from router_jobs.backend.schema import RedisSchema
from router_jobs.capacity.config import Cost
from router_jobs.errors import BudgetExceeded, JobValidationError
from router_jobs.models import Usage


@pytest.fixture
def budgets(r: redis.Redis, namespace: str) -> Budgets:
    return Budgets(r, RedisSchema(namespace))


def test_record_per_key_user_model_and_total(budgets: Budgets) -> None:
    budgets.record("k1", "gpt-4o", "alice", 0.25)
    budgets.record("k1", "gpt-4o-mini", "bob", 0.5)
    budgets.record("k2", "gpt-4o", None, 1.0)
    assert budgets.spend_today("key:k1") == pytest.approx(0.75)
    assert budgets.spend_today("user:alice") == pytest.approx(0.25)
    assert budgets.spend_today("model:gpt-4o") == pytest.approx(1.25)
    assert budgets.spend_today("total") == pytest.approx(1.75)
    assert budgets.spend_today("user:nobody") == 0.0
    report = budgets.report()
    assert report["day"] == budgets.today()
    assert report["users"] == {"alice": pytest.approx(0.25), "bob": pytest.approx(0.5)}
    assert report["keys"] == {"k1": pytest.approx(0.75), "k2": pytest.approx(1.0)}
    assert report["models"] == {"gpt-4o": pytest.approx(1.25), "gpt-4o-mini": pytest.approx(0.5)}
    assert report["total"] == pytest.approx(1.75) and report["caps"] == {}


def test_cost_from_key_price_table_and_usage(budgets: Budgets) -> None:
    cost = Cost(input=2.5, output=10.0)  # USD per million tokens
    usage = Usage(input_tokens=1000, output_tokens=500)
    assert cost_of(cost, usage) == pytest.approx(0.0075)
    assert budgets.record_usage(cost, usage, key_id="k1", model="gpt-4o", user_id="alice") == pytest.approx(0.0075)
    assert budgets.spend_today("user:alice") == pytest.approx(0.0075)


def test_day_is_the_server_utc_day_and_keys_expire(budgets: Budgets, r: redis.Redis, namespace: str) -> None:
    sec, _ = r.time()
    assert budgets.today() == datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%d")
    budgets.record("k1", "m", "u", 0.1)
    ttl = r.ttl(RedisSchema(namespace).budget_spend(budgets.today()))
    assert 7 * 86400 < ttl <= 8 * 86400
    assert budgets.spend_on("1999-01-01", "key:k1") == 0.0


def test_cap_refuses_with_the_reason(budgets: Budgets) -> None:
    budgets.set_cap("user:alice", 1.0)
    budgets.set_cap("key:k1", 5.0)
    budgets.check("alice", "k1", estimated_cost=0.9)
    budgets.record("k1", "m", "alice", 0.6)
    budgets.check("alice", "k1", estimated_cost=0.4)  # exactly up to the cap is fine
    with pytest.raises(BudgetExceeded) as err:
        budgets.check("alice", "k1", estimated_cost=0.5)
    assert err.value.scope == "user:alice" and err.value.cap == 1.0
    assert err.value.spent == pytest.approx(0.6)
    assert "user:alice" in str(err.value)
    budgets.check("bob", "k1", estimated_cost=0.5)  # bob has no cap, the key has room
    assert budgets.remaining("user:alice") == pytest.approx(0.4)
    assert budgets.remaining("user:bob") is None


def test_cap_reached_refuses_even_without_estimate(budgets: Budgets) -> None:
    budgets.set_cap("key:k1", 0.5)
    budgets.record("k1", "m", "alice", 0.5)
    with pytest.raises(BudgetExceeded) as err:
        budgets.check("alice", "k1")
    assert err.value.scope == "key:k1"
    with pytest.raises(BudgetExceeded):
        budgets.check(None, "k1")
    budgets.check("alice", None)  # the user is not capped
    assert budgets.clear_cap("key:k1") and not budgets.clear_cap("key:k1")
    budgets.check("alice", "k1")


def test_caps_listed_and_validated(budgets: Budgets) -> None:
    budgets.set_cap("user:alice", 2)
    budgets.set_cap("key:k1", 0)
    assert budgets.caps() == {"user:alice": 2.0, "key:k1": 0.0}
    assert budgets.report()["caps"] == {"user:alice": 2.0, "key:k1": 0.0}
    with pytest.raises(BudgetExceeded):
        budgets.check(None, "k1")  # a zero cap allows nothing
    for bad in ("alice", "model:gpt-4o", "user:", "team:x"):
        with pytest.raises(JobValidationError):
            budgets.set_cap(bad, 1.0)
    with pytest.raises(JobValidationError):
        budgets.set_cap("user:alice", -1)
    with pytest.raises(JobValidationError):
        budgets.record("k1", "m", "u", float("nan"))


def test_concurrent_records_add_up(budgets: Budgets) -> None:
    def spend() -> None:
        for _ in range(50):
            budgets.record("k1", "m", "alice", 0.01)

    threads = [threading.Thread(target=spend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert budgets.spend_today("user:alice") == pytest.approx(4.0)
    assert budgets.spend_today("total") == pytest.approx(4.0)
