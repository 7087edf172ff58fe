#!/usr/bin/python3
"""
bench.py - load generator and latency report for the order system.

Funds the customers and stocks the skus (through payment-service and
inventory-service) so that every order can confirm, posts N orders to
order-service from --concurrency worker threads (one keep-alive connection
each) at an optional target rate, then polls GET /orders/{id} until every order
is settled. Latency from POST to settled is the server's settledAt minus the
client's send time (both wall clock on this machine), so polling delay does not
inflate it. Prints throughput, latency percentiles, the outcome counts and
each daemon's resident memory and CPU time per settled order.

This is a tool, not a test: it never fails on speed. Exit status: 0 when every
order was posted and settled before --timeout, 1 otherwise, 2 on bad usage.
"""

import argparse
import datetime
import http.client
import json
import math
import os
import sys
import threading
import time
import urllib.parse
import uuid

DAEMONS = ("order-service", "payment-service", "inventory-service")


# ---------------------------------------------------------------- HTTP


class Conn:
    """One keep-alive HTTP/1.1 connection; reconnects once on a dropped socket."""

    def __init__(self, url, timeout=30.0):
        u = urllib.parse.urlsplit(url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"not an http:// URL: {url}")
        self.host, self.port = u.hostname, u.port or 80
        self.prefix = u.path.rstrip("/")
        self.timeout = timeout
        self.c = None

    def request(self, method, path, body=None):
        headers = {"Connection": "keep-alive"}
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):
            reused = self.c is not None
            if self.c is None:
                self.c = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.c.request(method, self.prefix + path, body=data, headers=headers)
                r = self.c.getresponse()
                payload = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.close()
                return r.status, payload
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest, http.client.BadStatusLine):
                # A reused keep-alive connection that the server had closed
                # while idle: retry once on a new one. A fresh connection that
                # fails is a real error.
                self.close()
                if not reused or attempt == 2:
                    raise

    def close(self):
        if self.c is not None:
            self.c.close()
            self.c = None


def put_json(url, path, body):
    c = Conn(url)
    try:
        status, payload = c.request("PUT", path, body)
    finally:
        c.close()
    if status != 200:
        raise RuntimeError(f"PUT {url}{path}: {status} {payload[:200]!r}")


# ---------------------------------------------------------------- helpers


def parse_ts(s):
    """RFC 3339 (e.g. 2026-11-26T22:50:01.123456Z) -> seconds since the epoch."""
    if s.endswith(("Z", "z")):
        s = s[:-1] + "+00:00"
    return datetime.datetime.fromisoformat(s).timestamp()


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list; None if empty."""
    if not sorted_values:
        return None
    k = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(k, len(sorted_values)) - 1]


def cpu_seconds(pid):
    """User + system CPU seconds a process has used so far, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def proc_status(pid):
    """VmRSS, VmHWM and RssAnon (kB) of a process, or None if it is gone.
    RssAnon is the process's own memory; the rest of VmRSS is shared library
    pages (libcrypto, libkrb5, ...) that other processes map too."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "Name"):
                    out[key] = rest.strip()
    except OSError:
        return None
    kb = {k: int(out[k].split()[0]) for k in ("VmRSS", "VmHWM", "RssAnon") if k in out}
    return {"name": out.get("Name", "?"), "rss_kb": kb.get("VmRSS"), "hwm_kb": kb.get("VmHWM"),
            "anon_kb": kb.get("RssAnon")}


def listening_inodes(port):
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    local, state, inode = cols[1], cols[3], cols[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except OSError:
            continue
    return inodes


def pid_listening_on(port):
    """The pid of the process that listens on a TCP port, or None."""
    inodes = listening_inodes(port)
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    return int(pid)
        except OSError:
            continue
    return None


def pids_by_comm(name):
    comm = name[:15]  # the kernel truncates comm to 15 bytes
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == comm:
                    found.append(int(pid))
        except OSError:
            continue
    return sorted(found)


def find_daemons(args):
    """[(daemon name, pid)]: from --pids, else the process listening on each
    URL's port, else every process whose comm is the binary name."""
    if args.pids:
        out = []
        for i, item in enumerate(args.pids.split(",")):
            name, _, pid = item.rpartition("=")
            out.append((name or (DAEMONS[i] if i < len(DAEMONS) else "pid"), int(pid)))
        return out
    out = []
    for name, url in zip(DAEMONS, (args.url, args.payment_url, args.inventory_url)):
        port = urllib.parse.urlsplit(url).port or 80
        host = urllib.parse.urlsplit(url).hostname
        pid = pid_listening_on(port) if host in ("127.0.0.1", "localhost", "::1") else None
        if pid is not None:
            out.append((name, pid))
        else:
            out += [(name, p) for p in pids_by_comm(name)]
    return out


# ---------------------------------------------------------------- the run


class Bench:
    def __init__(self, args):
        self.args = args
        self.run_id = uuid.uuid4().hex[:8]
        self.customers = [f"bench-{self.run_id}-c{i}" for i in range(args.customers)]
        self.skus = [f"bench-{self.run_id}-s{i}" for i in range(args.skus)]
        self.lock = threading.Lock()
        self.next_index = 0
        # per order index: (orderId, send wall time, POST latency s) or None
        self.posted = [None] * args.orders
        self.post_errors = []
        self.results = {}  # orderId -> settled order document

    def plan(self, i):
        a = self.args
        return {"customerId": self.customers[i % len(self.customers)],
                "sku": self.skus[i % len(self.skus)],
                "quantity": a.quantity, "amountCents": a.amount}

    def prepare(self):
        a = self.args
        per_cust = math.ceil(a.orders / len(self.customers))
        per_sku = math.ceil(a.orders / len(self.skus))
        for c in self.customers:
            put_json(a.payment_url, f"/accounts/{c}",
                     {"balanceCents": int(per_cust * a.amount * a.funds_factor)})
        for s in self.skus:
            put_json(a.inventory_url, f"/stock/{s}",
                     {"available": int(per_sku * a.quantity * a.funds_factor)})

    def _claim(self):
        with self.lock:
            i = self.next_index
            if i >= self.args.orders:
                return None
            self.next_index += 1
            return i

    def post_worker(self, t0):
        a = self.args
        conn = Conn(a.url)
        try:
            while (i := self._claim()) is not None:
                if a.rate > 0:
                    due = t0 + i / a.rate
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                body = self.plan(i)
                sent_wall, sent = time.time(), time.monotonic()
                try:
                    status, payload = conn.request("POST", "/orders", body)
                except (OSError, http.client.HTTPException) as e:
                    with self.lock:
                        self.post_errors.append(repr(e))
                    conn.close()
                    continue
                latency = time.monotonic() - sent
                if status != 202:
                    with self.lock:
                        self.post_errors.append(f"{status} {payload[:200]!r}")
                    continue
                self.posted[i] = (json.loads(payload)["orderId"], sent_wall, latency)
        finally:
            conn.close()

    def poll_worker(self, ids, out_unsettled):
        conn = Conn(self.args.url)
        try:
            for oid in ids:
                try:
                    status, payload = conn.request("GET", f"/orders/{oid}")
                except (OSError, http.client.HTTPException):
                    conn.close()
                    out_unsettled.append(oid)
                    continue
                if status == 200:
                    doc = json.loads(payload)
                    if doc.get("status") in ("CONFIRMED", "REJECTED") and doc.get("settledAt"):
                        with self.lock:
                            self.results[oid] = doc
                        continue
                out_unsettled.append(oid)
        finally:
            conn.close()

    def run_threads(self, target, argsets):
        threads = [threading.Thread(target=target, args=a, daemon=True) for a in argsets]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def post_all(self):
        t0 = time.monotonic()
        self.post_started = time.time()
        self.run_threads(self.post_worker, [(t0,)] * self.args.concurrency)
        self.post_finished = time.time()

    def poll_all(self):
        pending = [p[0] for p in self.posted if p is not None]
        deadline = time.monotonic() + self.args.timeout
        n = self.args.concurrency
        while pending and time.monotonic() < deadline:
            started = time.monotonic()
            unsettled = []
            self.run_threads(self.poll_worker, [(pending[k::n], unsettled) for k in range(n)])
            pending = unsettled
            if pending:
                time.sleep(max(0.0, 0.2 - (time.monotonic() - started)))
        return pending

    def report(self, unsettled, daemons, cpu_before):
        posted = [p for p in self.posted if p is not None]
        sends = {oid: sent for oid, sent, _ in posted}
        post_lat = sorted(lat for _, _, lat in posted)
        settle_lat, settled_at = [], []
        counts = {"CONFIRMED": 0, "REJECTED": 0}
        for oid, doc in self.results.items():
            counts[doc["status"]] = counts.get(doc["status"], 0) + 1
            t = parse_ts(doc["settledAt"])
            settled_at.append(t)
            settle_lat.append(t - sends[oid])
        settle_lat.sort()
        post_span = self.post_finished - self.post_started
        first_post = min((s for _, s, _ in posted), default=None)
        settle_span = (max(settled_at) - first_post) if settled_at else None
        ms = lambda v: None if v is None else round(v * 1000.0, 3)  # noqa: E731
        mem = []
        for name, pid in daemons:
            st = proc_status(pid)
            cpu0, cpu1 = cpu_before.get(pid), cpu_seconds(pid)
            cpu = round(cpu1 - cpu0, 3) if cpu0 is not None and cpu1 is not None else None
            mem.append({"daemon": name, "pid": pid,
                        "rss_kb": st and st["rss_kb"], "hwm_kb": st and st["hwm_kb"],
                        "anon_kb": st and st["anon_kb"], "cpu_s": cpu,
                        "cpu_ms_per_order": (round(cpu * 1000 / len(settled_at), 3)
                                             if cpu is not None and settled_at else None)})
        return {
            "orders": self.args.orders,
            "posted": len(posted),
            "post_errors": len(self.post_errors),
            "settled": len(self.results),
            "unsettled": len(unsettled),
            "concurrency": self.args.concurrency,
            "target_rate": self.args.rate,
            "posted_per_s": round(len(posted) / post_span, 1) if post_span > 0 else None,
            "settled_per_s": (round(len(settled_at) / settle_span, 1)
                              if settle_span and settle_span > 0 else None),
            "post_latency_ms": {"p50": ms(percentile(post_lat, 50)),
                                "p99": ms(percentile(post_lat, 99))},
            "settle_latency_ms": {"p50": ms(percentile(settle_lat, 50)),
                                  "p99": ms(percentile(settle_lat, 99)),
                                  "p999": ms(percentile(settle_lat, 99.9)),
                                  "max": ms(settle_lat[-1] if settle_lat else None)},
            "confirmed": counts.get("CONFIRMED", 0),
            "rejected": counts.get("REJECTED", 0),
            "memory": mem,
            "first_post_errors": self.post_errors[:5],
        }


def print_human(r):
    def f(v, unit=""):
        return "-" if v is None else f"{v}{unit}"
    print(f"orders            {r['orders']} (posted {r['posted']}, errors {r['post_errors']}, "
          f"settled {r['settled']}, unsettled {r['unsettled']})")
    print(f"concurrency       {r['concurrency']}, target rate "
          f"{r['target_rate'] or 'unlimited'}{'/s' if r['target_rate'] else ''}")
    print(f"posted/s          {f(r['posted_per_s'])}")
    print(f"settled orders/s  {f(r['settled_per_s'])}  (first post -> last settled)")
    pl, sl = r["post_latency_ms"], r["settle_latency_ms"]
    print(f"POST latency      p50 {f(pl['p50'], ' ms')}  p99 {f(pl['p99'], ' ms')}")
    print(f"POST->settled     p50 {f(sl['p50'], ' ms')}  p99 {f(sl['p99'], ' ms')}  "
          f"p999 {f(sl['p999'], ' ms')}  max {f(sl['max'], ' ms')}")
    print(f"outcome           CONFIRMED {r['confirmed']}  REJECTED {r['rejected']}")
    if not r["memory"]:
        print("memory            (no daemon process found; use --pids)")
    for m in r["memory"]:
        rss = "gone" if m["rss_kb"] is None else f"{m['rss_kb'] / 1024:.1f} MiB"
        hwm = "-" if m["hwm_kb"] is None else f"{m['hwm_kb'] / 1024:.1f} MiB"
        anon = "-" if m.get("anon_kb") is None else f"{m['anon_kb'] / 1024:.1f} MiB"
        print(f"memory            {m['daemon']:<18} pid {m['pid']:<8} VmRSS {rss:<10} "
              f"VmHWM {hwm:<10} RssAnon {anon}")
    for m in r["memory"]:
        if m.get("cpu_s") is not None:
            print(f"cpu               {m['daemon']:<18} {m['cpu_s']:.2f} s, "
                  f"{m['cpu_ms_per_order']} ms per settled order")
    if any(m.get("cpu_s") is not None for m in r["memory"]):
        print("                  (order-service's CPU includes answering this tool's GET polling)")
    for e in r["first_post_errors"]:
        print(f"post error        {e}")


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Post orders to order-service and measure throughput, POST-to-settled "
                    "latency and daemon memory. A tool, not a test.")
    p.add_argument("--orders", type=int, default=2000, help="orders to post (default 2000)")
    p.add_argument("--rate", type=float, default=0.0,
                   help="target orders per second over all workers; 0 = as fast as possible")
    p.add_argument("--concurrency", type=int, default=16,
                   help="worker threads, one keep-alive connection each (default 16)")
    p.add_argument("--url", default="http://127.0.0.1:8080", help="order-service base URL")
    p.add_argument("--payment-url", default="http://127.0.0.1:8081",
                   help="payment-service base URL (to fund the customers)")
    p.add_argument("--inventory-url", default="http://127.0.0.1:8082",
                   help="inventory-service base URL (to set the stock)")
    p.add_argument("--customers", type=int, default=20, help="distinct customers (default 20)")
    p.add_argument("--skus", type=int, default=10, help="distinct skus (default 10)")
    p.add_argument("--quantity", type=int, default=1, help="quantity per order (default 1)")
    p.add_argument("--amount", type=int, default=100, help="amountCents per order (default 100)")
    p.add_argument("--funds-factor", type=float, default=1.0,
                   help="funds and stock as a multiple of what the orders need; below 1 "
                        "makes some orders reject (default 1.0: all confirm)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds to wait for every order to settle (default 300)")
    p.add_argument("--pids", help="daemon pids for the memory report: NAME=PID,... or PID,... "
                                  "(default: the processes listening on the URLs' ports, else "
                                  "those named like the binaries)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    a = p.parse_args(argv)
    if a.orders < 1 or a.concurrency < 1 or a.customers < 1 or a.skus < 1 or a.rate < 0:
        p.error("--orders, --concurrency, --customers and --skus must be >= 1, --rate >= 0")
    if a.quantity < 1 or a.amount < 0 or a.funds_factor <= 0 or a.timeout <= 0:
        p.error("--quantity >= 1, --amount >= 0, --funds-factor > 0, --timeout > 0")
    return a


def main(argv=None):
    args = parse_args(argv)
    b = Bench(args)
    try:
        b.prepare()
    except (OSError, RuntimeError, ValueError, http.client.HTTPException) as e:
        print(f"bench: could not set up customers and stock: {e}", file=sys.stderr)
        return 1
    if not args.json:
        print(f"bench: run {b.run_id}: posting {args.orders} orders to {args.url} ...",
              file=sys.stderr)
    daemons = find_daemons(args)
    cpu_before = {pid: cpu_seconds(pid) for _, pid in daemons}
    b.post_all()
    unsettled = b.poll_all()
    report = b.report(unsettled, daemons, cpu_before)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_human(report)
    ok = report["post_errors"] == 0 and not unsettled and report["posted"] == args.orders
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
