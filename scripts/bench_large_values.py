"""Driver of bench-large-values.sh: PIDS are the three servers' process ids (node 1, 2, 3)."""
import http.client, json, os, signal, sys, threading, time

PIDS = [int(p) for p in sys.argv[1:]]
PORTS = [18101, 18102, 18103]
VALUE = b"v" * (1 << 20)
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids):
    total = 0
    for p in pids:
        fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def call(port, method, target, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    started = time.time()
    c.request(method, target, body=body)
    r = c.getresponse()
    data = r.read()
    return r.status, time.time() - started, data


def status(port):
    return json.loads(call(port, "GET", "/_status")[2])


def puts():
    cpu, started, answers = cpu_seconds(PIDS), time.time(), [None] * 12

    def put(i):
        answers[i] = call(PORTS[i % 3], "PUT", f"/kv/rest/entry/big-{i:03}", VALUE)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(12)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    used = cpu_seconds(PIDS) - cpu
    print(f"12 concurrent: statuses {sorted({a[0] for a in answers})}, slowest {max(a[1] for a in answers):.3f} s, "
          f"wall {time.time() - started:.2f} s, server CPU {used:.2f} s ({used / 12:.3f} s/op)")
    cpu, started, took, statuses = cpu_seconds(PIDS), time.time(), [], set()
    for i in range(12, 112):
        s, t, _ = call(PORTS[i % 3], "PUT", f"/kv/rest/entry/big-{i:03}", VALUE)
        statuses.add(s)
        took.append(t)
    used, took = cpu_seconds(PIDS) - cpu, sorted(took)
    print(f"100 sequential: statuses {sorted(statuses)}, p50 {took[50]:.3f} p99 {took[98]:.3f} max {took[-1]:.3f} s, "
          f"{100 / (time.time() - started):.1f} puts/s, server CPU {used:.2f} s ({used / 100:.3f} s/op)")
    small = [call(p, "PUT", f"/kv/rest/entry/{k}", b"small") for k in "abcdefghijklmnop" for p in PORTS]
    print(f"small writes after: statuses {sorted({s[0] for s in small})}, slowest {max(s[1] for s in small):.3f} s")


def paged_range():
    started, start, pages, rows, largest = time.time(), "big-", 0, 0, 0
    while True:
        s, _, body = call(PORTS[1], "GET", f"/kv/rest/range?start={start}&end=big-~&limit=10000")
        assert s == 200, body[:200]
        page = json.loads(body)
        pages, rows, largest = pages + 1, rows + len(page["rows"]), max(largest, len(body))
        if "resume_start" not in page["header"]:
            break
        start = page["header"]["resume_start"]
    print(f"range over 112 MiB: {pages} pages, {rows} rows, largest response {largest / 1e6:.2f} MB, "
          f"{time.time() - started:.2f} s")


def clean_stop():
    """SIGTERM the node leading shard 0 while writing one of its keys through another node."""
    me = status(PORTS[0])
    leader = next(s["replication"]["leader"] for s in me["shards"] if s["shard"] == 0)
    writer = PORTS[leader % 3]  # a node other than the leader
    key = next(k for k in (f"k{i}" for i in range(1000))
               if json.loads(call(writer, "PUT", f"/kv/rest/entry/{k}", b"x")[2])["header"]["token"].startswith("0:"))
    results, stop = [], threading.Event()

    def loop():
        i = 0
        while not stop.is_set():
            results.append(call(writer, "PUT", f"/kv/rest/entry/{key}", str(i).encode())[:2])
            i += 1

    t = threading.Thread(target=loop)
    t.start()
    time.sleep(1)
    before = len(results)
    os.kill(PIDS[leader - 1], signal.SIGTERM)
    time.sleep(3)
    stop.set()
    t.join()
    after = results[before:]
    print(f"clean stop of node {leader} (leader of shard 0): {len(after)} writes after, "
          f"failed {sum(1 for s, _ in after if s != 200)}, slowest {max(t for _, t in after) * 1000:.0f} ms")


for round in (1, 2):
    print(f"round {round}")
    puts()
paged_range()
clean_stop()
