"""
Broker faults on a three-node Kafka cluster (TEST_KAFKA_NODES=3: replication
factor 3, min.insync.replicas 2; `ctest -L fault` runs it so): the leader of
a partition is killed with SIGKILL while orders flow and comes back later.
Nothing may be lost, charged twice or reserved twice.
"""

import concurrent.futures as cf
import threading
import time

import pytest
from confluent_kafka.admin import AdminClient

from conftest import KAFKA_DIR, KAFKA_NODES, KAFKA_SH, run_script
from helpers import dlt_offsets, quiet, reconcile

pytestmark = pytest.mark.skipif(KAFKA_NODES < 3, reason="needs TEST_KAFKA_NODES=3 "
                                "(ctest -L fault sets it)")


def leader_of(bootstrap, topic, partition):
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    return md.topics[topic].partitions[partition].leader


def test_leader_broker_killed_under_load(stack):
    customers = {stack.uid("c"): 100_000 for _ in range(4)}
    skus = {stack.uid("s"): 10_000 for _ in range(3)}
    for c, b in customers.items():
        stack.fund(c, b)
    for s, n in skus.items():
        stack.set_stock(s, n)
    clist, slist = list(customers), list(skus)
    accepted, lock = [], threading.Lock()
    since = dlt_offsets(stack)

    def place(i):
        oid = stack.orders.create_ok(clist[i % 4], slist[i % 3], 1 + i % 2, 100 + i % 13)
        with lock:
            accepted.append(oid)
        time.sleep(0.04)

    victim = leader_of(stack.bootstrap, "orders.created", 0)
    assert 1 <= victim <= 3, f"unexpected leader id {victim}"
    with cf.ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(place, i) for i in range(400)]
        stack.wait_until(lambda: len(accepted) >= 80, 60, "80 orders accepted")
        run_script([KAFKA_SH, "kill-node", victim, "--dir", KAFKA_DIR])
        killed_at = len(accepted)
        # A new leader takes over once the controller fences the dead broker.
        stack.wait_until(lambda: leader_of(stack.bootstrap, "orders.created", 0)
                         not in (victim, -1), 60, "a new leader for orders.created/0")
        for f in futs:
            f.result()
    assert killed_at < 400, "the broker died after the flow had ended"
    stack.wait_until(lambda: quiet(stack, accepted), 180, "all 400 orders settled")
    run_script([KAFKA_SH, "start-node", victim, "--dir", KAFKA_DIR])
    status = reconcile(stack, accepted, customers, skus, dlt_since=since)
    assert set(status.values()) == {"CONFIRMED"}, "orders rejected although funds and stock sufficed"
    # Charged and reserved once: every balance and stock moved by exactly its
    # orders' amounts and quantities (reconcile() ties each payment and
    # reservation to its order).
    spent = dict(stack.sql("orders", "SELECT customer_id, sum(amount_cents) FROM orders WHERE"
                           " order_id = ANY(%s) GROUP BY customer_id", (accepted,)))
    taken = dict(stack.sql("orders", "SELECT sku, sum(quantity) FROM orders WHERE"
                           " order_id = ANY(%s) GROUP BY sku", (accepted,)))
    assert {c: b - stack.payments.balance(c) for c, b in customers.items()} == spent
    assert {k: n - stack.inventory.stock(k) for k, n in skus.items()} == taken
