"""The SOAP benchmark with 10 orders, for correctness only (never timing): both clients, each against its own
fresh iSync test server process, must leave exactly the generated orders there, and the report must carry
every figure."""

from __future__ import annotations

import sys

from conftest import REPO

if str(REPO) not in sys.path:  # benchmarks/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))
from benchmarks import soap  # noqa: E402


def test_soap_benchmark_runs_both_clients_and_checks_the_server() -> None:
    results = soap.run(orders=10, lines=2, concurrencies=[2], repeat=1, latency=0.0, log=None)

    assert results["problems"] == []
    row = results["concurrency"]["2"]
    for kind in ("engine", "bare"):
        assert len(row[kind]["all_wall"]) == 1
        assert row[kind]["wall"] > 0 and row[kind]["orders_per_s"] > 0
        assert row[kind]["inner"] is not None and 0 < row[kind]["inner"] <= row[kind]["wall"]
    assert row["ratio"] > 0 and row["inner_ratio"] > 0

    text = soap.render(results, "python -m benchmarks.soap --orders 10", "test machine")
    assert "| 2 |" in text and "engine/bare" in text
    assert "ignored no member: met" in text and "Problems:" not in text


def test_the_digest_tells_a_changed_order_apart() -> None:
    orders = soap.generate(3, 2)
    want = soap.expected_digest(orders)
    assert soap.expected_digest(soap.generate(3, 2)) == want
    changed = [orders[0], orders[1], soap.Order(orders[2].po, orders[2].track, orders[2].city, orders[2].address,
                                                orders[2].lines[:1])]
    assert soap.expected_digest(changed) != want
    assert soap.check_server({"orders": 3, "digest": want, "calls": {"PersistWebSalesOrder": 3}, "logins": 1,
                              "failed_logins": 0, "ignored_out_of_order": 0, "internal_errors": []}, 3, want) == []
    assert soap.check_server({"orders": 3, "digest": want, "calls": {"PersistWebSalesOrder": 4}, "logins": 1,
                              "failed_logins": 0, "ignored_out_of_order": 0, "internal_errors": []}, 3, want)
