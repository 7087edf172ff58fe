"""
System tests of orderctl, the operators' CLI in tools/: `topics ensure`,
`dlt tail`, `dlt depth` and `dlt replay` against a real Kafka broker of their
own. They need no daemons and no PostgreSQL.

The broker (KRaft, one node, port 19392, state in .run/test-orderctl-kafka) is
started clean once for this file by the session fixture `broker` and always
stopped at the end, also when a test failed. The tests run in file order and
build on each other: the topics created by the first ones are used by the
dead-letter tests.

Environment: ORDERS_BUILD_DIR (default <root>/build/dev) holds tools/orderctl;
TEST_KAFKA_VERSION picks the broker's Kafka version (the kafka4 entry: 4.1.1);
TEST_PORT_OFFSET moves the broker's port.
"""

import datetime
import json
import os
import select
import shlex
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from conftest import check_broker_version, kafka_sh_env
from helpers import LAUNCHER_ENV

ROOT = Path(__file__).resolve().parents[2]
KAFKA_SH = ROOT / "deploy" / "kafka" / "kafka.sh"
KAFKA_DIR = ROOT / ".run" / "test-orderctl-kafka"
KAFKA_PORT = 19392 + int(os.environ.get("TEST_PORT_OFFSET", "0"))
BOOTSTRAP = f"127.0.0.1:{KAFKA_PORT}"
BASE_TOPICS = ["orders.created", "payments.completed", "inventory.reserved"]
LEDGER = "orders.dlt-replays"
PARTITIONS = 6

# The dead-letter record the DLT tests write and follow through tail, depth, replay.
DLT_TOPIC = "orders.created.DLT"
ORIG_PARTITION = 3
ORIG_OFFSET = 87
ORIG_TIMESTAMP_MS = 1764197401123  # 2025-11-26T22:50:01.123Z
GROUP = "payment-service"
REASON = "unknown order order-orderctl-1"
CAUSE_POISON = b"org.springframework.kafka.support.serializer.DeserializationException"
CAUSE_PROCESSING = b"com.devcraftly.orders.RecordProcessingException"
KEY = b"order-orderctl-1"
VALUE = b'{"orderId":"order-orderctl-1","customerId":"c-1","sku":"sku-1","quantity":0,"amountCents":100}'
EVENT_HEADERS = [
    ("event-id", b"5b0e4c1e-6f3c-4d55-9a51-0d1c2b3a4f5e"),
    ("event-type", b"OrderCreated"),
    ("event-version", b"1"),
    ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
    ("__TypeId__", b"com.devcraftly.orders.events.OrderCreated"),
]


def orderctl_path():
    build = Path(os.environ.get("ORDERS_BUILD_DIR", str(ROOT / "build" / "dev")))
    return build / "tools" / "orderctl"


def run_kafka_sh(*args, timeout=180):
    cmd = [str(KAFKA_SH), *args, "--dir", str(KAFKA_DIR)]
    cp = subprocess.run(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True,
                        text=True, timeout=timeout, env=kafka_sh_env())
    if cp.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {cp.returncode}\n"
                           f"stdout:\n{cp.stdout}\nstderr:\n{cp.stderr}")
    return cp.stdout


@pytest.fixture(scope="session")
def broker():
    """A clean single-node broker for this file; stopped whatever happens."""
    if not orderctl_path().is_file():
        pytest.fail(f"{orderctl_path()} not found: build the orderctl target first")
    if (KAFKA_DIR / "cluster.env").exists():
        run_kafka_sh("clean")  # stops a broker left behind by an aborted run
    try:
        out = run_kafka_sh("start", "--port", str(KAFKA_PORT))
        check_broker_version(KAFKA_DIR, out)
        yield BOOTSTRAP
    finally:
        run_kafka_sh("stop")


@pytest.fixture(scope="session")
def admin(broker):
    return AdminClient({"bootstrap.servers": broker})


def orderctl(*args, timeout=90, extra_env=None):
    """Runs orderctl against the test broker; returns the CompletedProcess.
    The environment has no KAFKA_* variables but those in extra_env."""
    cmd = [str(orderctl_path()), *args, "--bootstrap", BOOTSTRAP]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    env.update(extra_env or {})
    cp = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                        timeout=timeout, env=env)
    print(f"$ {shlex.join(cmd)}  -> exit {cp.returncode}\n{cp.stdout}{cp.stderr}")
    return cp


def topic_shapes(admin):
    """name -> (partition count, replicas of partition 0) of every topic."""
    md = admin.list_topics(timeout=10)
    return {name: (len(t.partitions), len(t.partitions[0].replicas) if 0 in t.partitions else 0)
            for name, t in md.topics.items()}


def topic_config(admin, topic, name):
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([res])[res].result(timeout=10)
    return configs[name].value


def dlt_headers(orig_topic, partition, offset, ts_ms, group, reason, cause=CAUSE_PROCESSING):
    """The kafka_dlt-* headers as Spring (and common/cm_dlt.c) encode them."""
    return [
        ("kafka_dlt-original-topic", orig_topic.encode()),
        ("kafka_dlt-original-partition", struct.pack(">i", partition)),
        ("kafka_dlt-original-offset", struct.pack(">q", offset)),
        ("kafka_dlt-original-timestamp", struct.pack(">q", ts_ms)),
        ("kafka_dlt-original-timestamp-type", b"CREATE_TIME"),
        ("kafka_dlt-original-consumer-group", group.encode()),
        ("kafka_dlt-exception-fqcn",
         b"org.springframework.kafka.listener.ListenerExecutionFailedException"),
        ("kafka_dlt-exception-cause-fqcn", cause),
        ("kafka_dlt-exception-message", reason.encode()),
    ]


def read_topic(bootstrap, topic, timeout=20):
    """Every record of topic currently in it, as confluent_kafka messages."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-orderctl-reader",
                  "enable.auto.commit": False, "enable.partition.eof": False})
    try:
        md = c.list_topics(topic, timeout=10)
        want, tps = 0, []
        for p in md.topics[topic].partitions:
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                tps.append(TopicPartition(topic, p, low))
                want += high - low
        out = []
        if tps:
            c.assign(tps)
            deadline = time.monotonic() + timeout
            while len(out) < want and time.monotonic() < deadline:
                m = c.poll(0.5)
                if m is not None and not m.error():
                    out.append(m)
        assert len(out) == want, f"read {len(out)} of {want} records of {topic}"
        return out
    finally:
        c.close()


def total_records(bootstrap, topic):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-orderctl-reader"})
    try:
        md = c.list_topics(topic, timeout=10)
        total = 0
        for p in md.topics[topic].partitions:
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            total += high - low
        return total
    finally:
        c.close()


# ---------------------------------------------------------------- command line


def test_help_and_usage_errors():
    assert orderctl_path().is_file(), f"{orderctl_path()} not found"
    for args in (["--help"], ["dlt", "tail", "--help"], ["dlt", "depth", "--help"],
                 ["dlt", "replay", "--help"], ["topics", "ensure", "--help"]):
        cp = orderctl(*args)
        assert cp.returncode == 0
        assert "Exit status" in cp.stdout
    for args in ([], ["dlt"], ["nonsense", "x"], ["dlt", "replay"],
                 ["dlt", "replay", "--all", "--key", "k"], ["dlt", "tail", "--max", "0"],
                 ["dlt", "tail", "--topic", "orders.created"], ["dlt", "depth", "--warn", "x"],
                 ["topics", "ensure", "--partitions", "-1"], ["dlt", "replay", "--partition", "1"]):
        assert orderctl(*args).returncode == 2, args


def test_unreachable_broker_is_exit_3():
    cmd = [str(orderctl_path()), "dlt", "depth", "--bootstrap", "127.0.0.1:1", "--timeout", "2"]
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert cp.returncode == 3, cp.stderr
    assert "127.0.0.1:1" in cp.stderr


# ---------------------------------------------------------------- topics ensure


def test_topics_ensure_creates_all_topics(broker, admin):
    assert not set(BASE_TOPICS) & set(topic_shapes(admin)), "broker not empty"
    cp = orderctl("topics", "ensure")
    assert cp.returncode == 0, cp.stderr
    shapes = topic_shapes(admin)
    for t in BASE_TOPICS:
        assert shapes[t] == (PARTITIONS, 1), t
        assert shapes[t + ".DLT"] == (PARTITIONS, 1), t
        assert f"created: {t} partitions 6" in cp.stdout
    assert shapes[LEDGER] == (1, 1)
    assert topic_config(admin, LEDGER, "cleanup.policy") == "compact"
    assert topic_config(admin, "orders.created", "min.insync.replicas") == "1"
    assert "topics: 0 ok, 7 created, 0 with drift, 0 failed" in cp.stdout


def test_topics_ensure_again_creates_nothing(broker, admin):
    before = topic_shapes(admin)
    cp = orderctl("topics", "ensure")
    assert cp.returncode == 0, cp.stderr
    assert "created:" not in cp.stdout
    assert "topics: 7 ok, 0 created, 0 with drift, 0 failed" in cp.stdout
    assert topic_shapes(admin) == before


def recreate_topic(admin, name, partitions, timeout=60):
    admin.delete_topics([name])[name].result(timeout=30)
    deadline = time.monotonic() + timeout
    while True:  # deletion completes asynchronously
        try:
            admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)
            break
        except Exception:  # still marked for deletion
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    while topic_shapes(admin).get(name, (0, 0))[0] != partitions:  # metadata catches up
        assert time.monotonic() < deadline, f"{name} does not show {partitions} partitions"
        time.sleep(0.2)


def test_kafka_launcher_variables_are_ignored(broker, admin):
    """orderctl works in a shell with Kafka's launcher variables set, without a
    word about them (--verbose names each), and refuses an unknown KAFKA_*
    name as the daemons do (exit 78 naming it, nothing created)."""
    cp = orderctl("topics", "ensure", extra_env=LAUNCHER_ENV)
    assert cp.returncode == 0, cp.stderr
    assert "ignoring" not in cp.stderr, cp.stderr
    cp = orderctl("topics", "ensure", "--verbose", extra_env=LAUNCHER_ENV)
    assert cp.returncode == 0, cp.stderr
    for var in LAUNCHER_ENV:
        assert f"ignoring {var}:" in cp.stderr, f"--verbose did not name {var}:\n{cp.stderr}"
    cp = orderctl("topics", "ensure", extra_env=dict(LAUNCHER_ENV, KAFKA_NO_SUCH_PROPERTY="1"))
    assert cp.returncode == 78, cp.stderr
    assert cp.stderr.startswith("orderctl: configuration error: unknown KAFKA_NO_SUCH_PROPERTY:"), (
        cp.stderr)
    assert "ignoring" not in cp.stderr and "created:" not in cp.stdout, cp.stderr


def test_topics_ensure_reports_drift_and_changes_nothing(broker, admin):
    recreate_topic(admin, "payments.completed", 2)
    cp = orderctl("topics", "ensure")
    assert cp.returncode == 1, cp.stderr
    assert "drift: payments.completed partitions 2, want 6" in cp.stdout.splitlines()
    assert sum(1 for line in cp.stdout.splitlines() if line.startswith("drift:")) == 1
    shapes = topic_shapes(admin)
    assert shapes["payments.completed"] == (2, 1)  # never altered
    assert shapes["payments.completed.DLT"] == (PARTITIONS, 1)  # never shrunk
    cp = orderctl("topics", "ensure", "--min-insync", "2")
    assert cp.returncode == 2  # more than the replication factor of 1


# ---------------------------------------------------------------- dead letters


@pytest.fixture(scope="session")
def dlt_record(broker):
    """Writes one dead-letter record onto orders.created.DLT; returns its offset."""
    p = Producer({"bootstrap.servers": broker, "enable.idempotence": True})
    delivered = []
    headers = EVENT_HEADERS + dlt_headers("orders.created", ORIG_PARTITION, ORIG_OFFSET,
                                          ORIG_TIMESTAMP_MS, GROUP, REASON)
    p.produce(DLT_TOPIC, key=KEY, value=VALUE, partition=ORIG_PARTITION, headers=headers,
              on_delivery=lambda err, msg: delivered.append((err, msg)))
    assert p.flush(30) == 0
    err, msg = delivered[0]
    assert err is None, err
    return msg.offset()


def test_dlt_tail_decodes_headers(broker, dlt_record):
    cp = orderctl("dlt", "tail", "--json")
    assert cp.returncode == 0, cp.stderr
    records = [json.loads(line) for line in cp.stdout.splitlines()]
    assert len(records) == 1
    r = records[0]
    assert (r["dltTopic"], r["dltPartition"], r["dltOffset"]) == (DLT_TOPIC, ORIG_PARTITION,
                                                                  dlt_record)
    assert r["originalTopic"] == "orders.created"
    assert r["originalPartition"] == ORIG_PARTITION
    assert r["originalOffset"] == ORIG_OFFSET
    assert r["originalTimestamp"] == "2025-11-26T22:50:01.123Z"
    assert r["originalTimestampType"] == "CREATE_TIME"
    assert r["consumerGroup"] == GROUP
    assert r["exceptionFqcn"].endswith("ListenerExecutionFailedException")
    assert r["exceptionCauseFqcn"].endswith("RecordProcessingException")
    assert r["exceptionMessage"] == REASON
    assert r["key"] == KEY.decode() and r["payload"] == VALUE.decode()
    assert [(h["name"], h["value"].encode()) for h in r["headers"]] == EVENT_HEADERS
    ts = datetime.datetime.fromisoformat(r["timestamp"].replace("Z", "+00:00"))
    assert abs((datetime.datetime.now(datetime.timezone.utc) - ts).total_seconds()) < 600

    cp = orderctl("dlt", "tail", "--topic", DLT_TOPIC, "--max", "5")
    assert cp.returncode == 0, cp.stderr
    assert f"{DLT_TOPIC}/{ORIG_PARTITION}/{dlt_record} at " in cp.stdout
    assert f"orders.created/{ORIG_PARTITION}/{ORIG_OFFSET} at 2025-11-26T22:50:01.123Z" in cp.stdout
    assert REASON in cp.stdout and GROUP in cp.stdout
    assert "1 dead-letter record(s)" in cp.stdout


def test_dlt_tail_follow_stops_on_sigint(broker, dlt_record):
    cmd = [str(orderctl_path()), "dlt", "tail", "-f", "--json", "--bootstrap", BOOTSTRAP]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "no record within 30 s"
        assert f'"dltOffset":{dlt_record}' in proc.stdout.readline()
        time.sleep(0.5)
        assert proc.poll() is None, "tail -f exited on its own"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def depth_row(stdout, topic, partition):
    for line in stdout.splitlines():
        f = line.split()
        if len(f) == 6 and f[0] == topic and f[1] == str(partition):
            return [int(x) for x in f[2:]]
    raise AssertionError(f"no row for {topic} {partition} in:\n{stdout}")


def test_dlt_depth_counts_the_record(broker, dlt_record):
    cp = orderctl("dlt", "depth", "--warn", "0")
    assert cp.returncode == 1, cp.stderr
    assert depth_row(cp.stdout, DLT_TOPIC, ORIG_PARTITION) == [0, dlt_record + 1, 1, 1]
    assert "1 not yet replayed (warn above 0)" in cp.stdout
    assert orderctl("dlt", "depth", "--warn", "1").returncode == 0


def test_dlt_replay_dry_run_sends_nothing(broker, dlt_record):
    cp = orderctl("dlt", "replay", "--all", "--dry-run")
    assert cp.returncode == 0, cp.stderr
    assert f"would replay {DLT_TOPIC}/{ORIG_PARTITION}/{dlt_record} to orders.created/3" in cp.stdout
    assert "would replay 1, skipped 0 already replayed, 0 failed" in cp.stdout
    assert total_records(broker, "orders.created") == 0


def test_dlt_replay_sends_the_record_back(broker, dlt_record):
    cp = orderctl("dlt", "replay", "--all")
    assert cp.returncode == 0, cp.stderr
    assert "replayed 1, skipped 0 already replayed, 0 failed" in cp.stdout
    msgs = read_topic(broker, "orders.created")
    assert len(msgs) == 1
    m = msgs[0]
    assert m.partition() == ORIG_PARTITION
    assert m.key() == KEY and m.value() == VALUE
    headers = m.headers()
    assert headers[:len(EVENT_HEADERS)] == EVENT_HEADERS  # kept, in order
    assert not [h for h, _ in headers if h.startswith("kafka_dlt-")]
    assert headers[len(EVENT_HEADERS):] == [
        ("orders-replayed-from", f"{DLT_TOPIC}/{ORIG_PARTITION}/{dlt_record}".encode())]
    markers = read_topic(broker, LEDGER)
    assert [x.key() for x in markers] == [f"{DLT_TOPIC}/{ORIG_PARTITION}/{dlt_record}".encode()]


def test_dlt_replay_twice_replays_nothing(broker, dlt_record):
    cp = orderctl("dlt", "replay", "--all")
    assert cp.returncode == 0, cp.stderr
    assert "replayed 0, skipped 1 already replayed, 0 failed" in cp.stdout
    cp = orderctl("dlt", "replay", "--topic", DLT_TOPIC, "--partition", str(ORIG_PARTITION),
                  "--from", str(dlt_record), "--to", str(dlt_record))
    assert cp.returncode == 0, cp.stderr
    assert "replayed 0, skipped 1 already replayed, 0 failed" in cp.stdout
    assert total_records(broker, "orders.created") == 1  # no second copy


def test_dlt_depth_after_replay(broker, admin, dlt_record):
    cp = orderctl("dlt", "depth", "--warn", "0")
    assert cp.returncode == 0, cp.stderr
    assert depth_row(cp.stdout, DLT_TOPIC, ORIG_PARTITION) == [0, dlt_record + 1, 1, 0]
    assert "0 not yet replayed" in cp.stdout
    # tail, depth and replay read with assign() and never commit: no group exists
    assert [g.id for g in admin.list_groups(timeout=10)] == []


def write_dlt(broker, dlt_topic, dlt_partition, key, value, orig_offset, group, cause):
    """Writes one DLT record as consumer group `group` would have dead-lettered
    the record at <source>/<dlt_partition>/<orig_offset>; returns its offset."""
    source = dlt_topic[:-len(".DLT")]
    etype = {"orders.created": b"OrderCreated", "payments.completed": b"PaymentCompleted",
             "inventory.reserved": b"InventoryReserved"}[source]
    hdrs = [("event-type", etype), ("event-version", b"1")] + dlt_headers(
        source, dlt_partition, orig_offset, ORIG_TIMESTAMP_MS, group, "test", cause)
    p = Producer({"bootstrap.servers": broker, "enable.idempotence": True})
    out = []
    p.produce(dlt_topic, key=key, value=value, partition=dlt_partition, headers=hdrs,
              on_delivery=lambda err, msg: out.append((err, msg)))
    assert p.flush(30) == 0 and out and out[0][0] is None, out
    return out[0][1].offset()


def keys_on(broker, topic, partition):
    return [m.key() for m in read_topic(broker, topic) if m.partition() == partition]


def not_replayed(topic, partition):
    cp = orderctl("dlt", "depth", "--warn", "1000")
    assert cp.returncode == 0, cp.stderr
    return depth_row(cp.stdout, topic, partition)[3]


def test_dlt_replay_keeps_poison_records(broker):
    """A poison record, dead-lettered by both consumer groups of
    orders.created, is not sent back by `replay --all` (each group would
    dead-letter it again: 2 copies become 4, then 8): replayed twice, the DLT
    depth stays where it was and nothing reaches the source topic. Asked for
    with --include-poison, it is sent back once for its two copies."""
    key, val = b"poison-orderctl-1", b"\x00\xffnot json{"
    for group in ("payment-service", "inventory-service"):
        write_dlt(broker, DLT_TOPIC, 1, key, val, 40, group, CAUSE_POISON)
    depth0 = not_replayed(DLT_TOPIC, 1)
    source0 = total_records(broker, "orders.created")
    assert depth0 == 2
    for _ in range(2):
        cp = orderctl("dlt", "replay", "--all")
        assert cp.returncode == 0, cp.stderr
        assert "replayed 0, skipped 1 already replayed, 0 failed" in cp.stdout
        assert "kept 2 poison record(s) on the DLT" in cp.stdout
        assert not_replayed(DLT_TOPIC, 1) == depth0
        assert total_records(broker, DLT_TOPIC) == 3
        assert total_records(broker, "orders.created") == source0
    cp = orderctl("dlt", "replay", "--key", key.decode(), "--include-poison")
    assert cp.returncode == 0, cp.stderr
    assert "replayed 1, skipped 0 already replayed, 0 failed" in cp.stdout
    assert "marked 1 copy(ies)" in cp.stdout
    assert keys_on(broker, "orders.created", 1) == [key]
    assert not_replayed(DLT_TOPIC, 1) == 0


def test_dlt_replay_sends_a_record_of_both_groups_once(broker):
    """A valid record that both consumer groups of inventory.reserved
    dead-lettered (two DLT copies naming the same original offset) goes back
    once, also when the second copy arrives after a first replay; the copies
    are all marked as replayed, and a record of its own between them is sent
    as usual."""
    dlt, part = "inventory.reserved.DLT", 2
    k1, k2, k3 = b"both-groups-1", b"one-group-2", b"late-copy-3"
    write_dlt(broker, dlt, part, k1, b'{"v":1}', 70, "order-service", CAUSE_PROCESSING)
    write_dlt(broker, dlt, part, k2, b'{"v":2}', 71, "payment-service", CAUSE_PROCESSING)
    write_dlt(broker, dlt, part, k1, b'{"v":1}', 70, "payment-service", CAUSE_PROCESSING)
    write_dlt(broker, dlt, part, k3, b'{"v":3}', 72, "order-service", CAUSE_PROCESSING)
    cp = orderctl("dlt", "replay", "--topic", dlt, "--all")
    assert cp.returncode == 0, cp.stderr
    assert "replayed 3, skipped 0 already replayed, 0 failed" in cp.stdout
    assert "marked 1 copy(ies)" in cp.stdout
    assert sorted(keys_on(broker, "inventory.reserved", part)) == sorted([k1, k2, k3])
    assert not_replayed(dlt, part) == 0

    # The other group dead-letters k3 later: a second replay only marks it.
    write_dlt(broker, dlt, part, k3, b'{"v":3}', 72, "payment-service", CAUSE_PROCESSING)
    assert not_replayed(dlt, part) == 1
    cp = orderctl("dlt", "replay", "--topic", dlt, "--all")
    assert cp.returncode == 0, cp.stderr
    assert "replayed 0, skipped 4 already replayed, 0 failed" in cp.stdout
    assert "marked 1 copy(ies)" in cp.stdout
    assert sorted(keys_on(broker, "inventory.reserved", part)) == sorted([k1, k2, k3])
    assert not_replayed(dlt, part) == 0
