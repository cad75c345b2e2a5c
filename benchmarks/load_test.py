"""Load test of ``blackbox-sal serve`` on loopback, against the batch job on the same texts.

Starts the server itself (a subprocess on a free port; the bundled model, or --model PATH,
served as "default"), waits until it is ready, then N clients (threads, one keep-alive
connection each) send one text at a time to ``POST /v1/models/default:explain`` for T
seconds, after a short warm-up. Each request's answer is checked: JSON, a documented status,
and for a 200 exactly one explanation whose text is the text sent (the protocol echoes no
id; each connection has one request in flight, so an answer belongs to the request before
it). Recorded: latency p50/p90/p99, texts/s, statuses, requests sent and answered, the
server's peak RSS (VmHWM, and VmRSS sampled during the load) and CPU seconds (utime + stime
of /proc/PID/stat, all threads), the clients' own CPU seconds (on a small machine they
compete with the server), and how the server stops on SIGTERM (it drains). Then the batch
job (``run_batch``, in a subprocess, model loaded and gradient graph warm as the server's)
explains the first texts the clients sent, as many as the server answered (--batch-texts), with the same
method; printed: server texts/s / batch texts/s.

Texts: ``models/.cache/rotten-tomatoes/test.jsonl`` (field "text"; ``python
models/train_bow_mlp.py`` writes it) when present, else a few sentences held here. The
machine is usually shared: the load average is printed before and after; repeat runs.

    python benchmarks/load_test.py                                   # bundled CNN, 32 clients, 30 s
    python benchmarks/load_test.py --model models/.cache/optimum-minilm-cls --steps 16 --json out.json
    python benchmarks/load_test.py --server-args "--batch-window 0.002 --max-active 32"

Hostile clients beside the normal ones (issue 22): ``--stalled N`` connections each send a
POST's headers and 20 bytes of a 1,000-byte body, then nothing (when the server closes one, a
408 after its read timeout, it opens another, for the whole load); ``--slow N`` clients send
each body in 8 pieces over ``--slow-seconds`` (their answers are checked as the normal ones').
The report keeps the normal clients' latency apart, and counts what the stalled ones got.

    python benchmarks/load_test.py --minutes 1 --clients 8 --stalled 40 --slow 4 --no-batch
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "models" / ".cache" / "rotten-tomatoes" / "test.jsonl"
ROUTE = "/v1/models/default:explain"
DOCUMENTED = {200, 400, 404, 408, 413, 415, 422, 429, 503, 504}
FALLBACK = [
    "An absolute masterpiece: the best film I have seen this year.",
    "A dull, lifeless script that wastes a talented cast.",
    "The plot is predictable, but the performances are warm and often funny.",
    "I walked out halfway through; it was that boring.",
    "Visually stunning, emotionally hollow.",
    "A smart, spooky thriller with a riveting final act.",
    "Too long by an hour and not nearly as clever as it thinks it is.",
    "The kind of refreshing comedy that reminds you why you go to the movies.",
    "Neither the jokes nor the action scenes land.",
    "Heartbreaking and absorbing from the first frame to the last.",
    "It has moments of charm, but mostly it is a mess.",
    "A tired retread of every heist movie you have already seen.",
]


def read_texts(path: Path | None, limit: int) -> tuple[list[str], str]:
    path = path or (DATA if DATA.exists() else None)
    if path is None:
        return FALLBACK, "the script's own sentences"
    texts = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            text = json.loads(line).get("text")
            if isinstance(text, str) and text.strip():
                texts.append(text)
            if len(texts) >= limit:
                break
    return texts, str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} CPUs)"


# -- the server process -----------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime + stime of the process (all its threads), or of its thread ``tid``, in seconds."""
    with open(f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # fields 14 and 15 of stat(5)


class RssMonitor(threading.Thread):
    def __init__(self, pid: int, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.peak = pid, every, 0
        self.samples: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.every):
            try:
                rss = proc_status(self.pid)["VmRSS"]
            except (OSError, KeyError):
                return
            self.peak = max(self.peak, rss)
            self.samples.append(rss)


def start_server(args: argparse.Namespace, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "blackbox_sal", "serve", f"default={args.model}" if args.model else "",
           "--port", str(port), "--method", args.method, "-q"]
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    cmd = [c for c in cmd if c] + shlex.split(args.server_args)
    print("server:", " ".join(cmd[1:]), flush=True)
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)


def wait_ready(server: subprocess.Popen[bytes], port: int, timeout: float, log: Path) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if server.poll() is not None:
            sys.exit(f"the server exited ({server.returncode}):\n{log.read_text(errors='replace')[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.2)
    server.kill()
    sys.exit(f"the server was not ready in {timeout:g} s")


# -- the clients ------------------------------------------------------------------------------


@dataclass
class Record:
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # seconds, answered requests
    engine: list[float] = field(default_factory=list)  # seconds in the engine (the answers' producer.seconds)
    sent: int = 0
    answered: int = 0
    wrong: list[str] = field(default_factory=list)  # answers that were not the request's
    texts_ok: int = 0
    last: float = 0.0


class Client(threading.Thread):
    def __init__(self, port: int, texts: list[str], counter: itertools.count[int], parameters: dict[str, Any],
                 stop_at: float, timeout: float, slow: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.port, self.texts, self.counter, self.parameters = port, texts, counter, parameters
        self.stop_at, self.timeout, self.slow = stop_at, timeout, slow
        self.record = Record()
        self.conn: http.client.HTTPConnection | None = None

    def run(self) -> None:
        rec = self.record
        while time.monotonic() < self.stop_at:
            k = next(self.counter)  # atomic under the GIL: every request has its own k
            text = self.texts[k % len(self.texts)]
            body = json.dumps({"instances": [{"text": text, "id": str(k)}], "parameters": self.parameters})
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            rec.sent += 1
            start = time.perf_counter()
            try:
                self.send(body.encode())
                response = self.conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                rec.statuses[f"error {type(exc).__name__}"] += 1
                self.conn.close()
                self.conn = None
                continue
            rec.latencies.append(time.perf_counter() - start)
            rec.answered += 1
            rec.last = time.monotonic()
            rec.statuses[str(response.status)] += 1
            problem, seconds = check(response.status, response.getheader("content-type", ""), data, text)
            if problem:
                rec.wrong.append(f"request {k}: {problem}")
            elif response.status == 200:
                rec.texts_ok += 1
                rec.engine.append(seconds)
        if self.conn is not None:
            self.conn.close()

    def send(self, body: bytes, pieces: int = 8) -> None:
        """The request, its body at once, or (a slow client) in ``pieces`` over ``slow`` seconds."""
        assert self.conn is not None
        if not self.slow:
            self.conn.request("POST", ROUTE, body, {"Content-Type": "application/json"})
            return
        self.conn.putrequest("POST", ROUTE)
        self.conn.putheader("Content-Type", "application/json")
        self.conn.putheader("Content-Length", str(len(body)))
        self.conn.endheaders()
        step = -(-len(body) // pieces)
        for i in range(0, len(body), step):
            time.sleep(self.slow / pieces)
            self.conn.send(body[i:i + step])


class Stalled(threading.Thread):
    """A connection that sends a POST's headers and 20 bytes of its 1,000-byte body, then
    waits; when the server answers or closes it, another, until ``stop_at``."""

    def __init__(self, port: int, stop_at: float) -> None:
        super().__init__(daemon=True)
        self.port, self.stop_at = port, stop_at
        self.opened = 0
        self.answers: Counter[str] = Counter()  # the status line's code, "closed" (no answer) or "held to the end"

    def run(self) -> None:
        head = (f"POST {ROUTE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                "Content-Length: 1000\r\n\r\n").encode() + b'{"instances": ["never'
        while time.monotonic() < self.stop_at:
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                sock.sendall(head)
            except OSError:
                self.answers["refused"] += 1
                time.sleep(0.1)
                continue
            self.opened += 1
            got = b""
            try:
                while time.monotonic() < self.stop_at:
                    sock.settimeout(max(0.05, min(1.0, self.stop_at - time.monotonic())))
                    try:
                        chunk = sock.recv(4096)
                    except TimeoutError:
                        continue
                    if not chunk:
                        break
                    got += chunk
                else:
                    self.answers["held to the end"] += 1
                    continue
                self.answers[got.split(b" ", 2)[1].decode() if got.startswith(b"HTTP/1.1 ") else "closed"] += 1
            except OSError:
                self.answers["reset"] += 1
            finally:
                sock.close()


def check(status: int, content_type: str, data: bytes, text: str) -> tuple[str | None, float]:
    """(None when the answer is a documented one to this text, else what is wrong; the seconds
    the server says the text took from its arrival in the engine's queue)."""
    if status not in DOCUMENTED:
        return f"undocumented status {status}: {data[:200]!r}", 0.0
    if not content_type.startswith("application/json"):
        return f"{status} is not JSON ({content_type})", 0.0
    try:
        answer = json.loads(data)
    except ValueError:
        return f"{status}: the body is not JSON: {data[:200]!r}", 0.0
    if status != 200:
        return (None if answer.get("status") == status else f"{status}: {answer}"), 0.0
    explanations = answer.get("explanations")
    if not isinstance(explanations, list) or len(explanations) != 1:
        return f"{len(explanations or [])} explanations for one text", 0.0
    if explanations[0].get("text") != text:
        return f"the answer explains {explanations[0].get('text')!r}, not {text!r}", 0.0
    return None, float(explanations[0].get("producer", {}).get("seconds", 0.0))


def run_clients(port: int, texts: list[str], counter: itertools.count[int], n: int, seconds: float,
                parameters: dict[str, Any], timeout: float, slow: int = 0, slow_seconds: float = 2.0,
                stalled: int = 0) -> tuple[list[Client], float, float, list[Client], list[Stalled]]:
    """The normal clients (with their start and end), and the slow and stalled ones beside them."""
    start = time.monotonic()
    clients = [Client(port, texts, counter, parameters, start + seconds, timeout) for _ in range(n)]
    slows = [Client(port, texts, counter, parameters, start + seconds, timeout, slow_seconds) for _ in range(slow)]
    stalls = [Stalled(port, start + seconds) for _ in range(stalled)]
    for t in [*stalls, *slows, *clients]:
        t.start()
    for c in clients:
        c.join()
    end = time.monotonic()
    for t in [*slows, *stalls]:
        t.join()
    return clients, start, end, slows, stalls


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


# -- the batch job ----------------------------------------------------------------------------

BATCH = """
import json, resource, sys, time
import blackbox_sal as bs
from blackbox_sal.jobs.batch import run_batch
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.gradient_graph.store import gradient_session
from blackbox_sal.vocabulary.errors import ModelError
a = json.loads(sys.argv[1])
model = bs.load_model(a["model"] or bs.default_model_path())
try:
    gradient_session(model)  # as the server does before it is ready
except ModelError:
    pass
cfg = ExplainConfig(method=a["method"], progress=False, **({"steps": a["steps"]} if a["steps"] else {}))
run_batch(model, a["warm"], a["warm_out"], cfg, progress=False)
cpu = resource.getrusage(resource.RUSAGE_SELF)
start = time.monotonic()
s = run_batch(model, a["input"], a["output"], cfg, progress=False)
wall = time.monotonic() - start
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"rows": s.rows, "explained": s.explained, "failed": s.failed, "seconds": wall,
                  "cpu_seconds": after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime,
                  "peak_rss_kib": after.ru_maxrss}))
"""


def run_batch_job(args: argparse.Namespace, texts: list[str], tmp: Path) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="batch-", dir=tmp))  # a fresh output: run_batch resumes an old one
    for name, rows in (("warm", texts[:16]), ("input", texts)):
        with open(tmp / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for t in rows:
                fh.write(json.dumps({"text": t}) + "\n")
    a = {"model": args.model, "method": args.method, "steps": args.steps, "warm": str(tmp / "warm.jsonl"),
         "warm_out": str(tmp / "warm.out.jsonl"), "input": str(tmp / "input.jsonl"), "output": str(tmp / "out.jsonl")}
    done = subprocess.run([sys.executable, "-c", BATCH, json.dumps(a)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"the batch job failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["texts_per_second"] = result["explained"] / result["seconds"]
    return result


# -- main -------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (default: the bundled sentiment CNN)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the measured load (default: 30)")
    ap.add_argument("--minutes", type=float, help="length of the measured load in minutes (instead of --seconds)")
    ap.add_argument("--stalled", type=int, default=0,
                    help="connections that send part of a body and stop, beside the clients (default: 0)")
    ap.add_argument("--slow", type=int, default=0,
                    help="clients that send each body in 8 pieces over --slow-seconds (default: 0)")
    ap.add_argument("--slow-seconds", type=float, default=2.0, help="a slow client's time per body (default: 2)")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of load before it (default: 3)")
    ap.add_argument("--method", default="ig", help="attribution method (default: ig, the batch job's)")
    ap.add_argument("--steps", type=int, help="integrated-gradients nodes (default: the library's, 50)")
    ap.add_argument("--data", type=Path, help=f"JSONL with a 'text' field (default: {DATA} if present)")
    ap.add_argument("--texts", type=int, default=100_000, help="at most this many texts from --data")
    ap.add_argument("--batch-texts", type=int,
                    help="texts the batch job explains (default: as many as the server answered, at least 32)")
    ap.add_argument("--server-args", default="", help='more options for serve, e.g. "--batch-window 0.002"')
    ap.add_argument("--timeout", type=float, default=120.0, help="a client's socket timeout (default: 120)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measured loads, each followed by its batch job, on the same server (default: 1)")
    ap.add_argument("--no-batch", action="store_true", help="skip the batch job")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.minutes is not None:
        args.seconds = 60 * args.minutes

    texts, source = read_texts(args.data, args.texts)
    print(f"texts: {len(texts)} from {source}", flush=True)
    parameters: dict[str, Any] = {"method": args.method, **({"steps": args.steps} if args.steps else {})}
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="sal-load-"))
    log = tmp / "server.log"
    server = start_server(args, port, log)
    results: dict[str, Any] = {"texts": len(texts), "source": source, "model": args.model or "bundled sentiment-cnn",
                               "clients": args.clients, "seconds": args.seconds, "parameters": parameters,
                               "server_args": args.server_args, "runs": []}
    failed = False
    try:
        results["ready_seconds"] = round(wait_ready(server, port, 600, log), 2)
        counter = itertools.count()
        if args.warmup > 0:
            run_clients(port, texts, counter, args.clients, args.warmup, parameters, args.timeout)
        for k in range(args.repeat):
            run = measure(args, server.pid, port, texts, counter, parameters, tmp)
            results["runs"].append(run)
            failed |= not run["server"]["every_request_answered_once"] or bool(run["server"]["undocumented_5xx"])
            failed |= bool(run.get("hostile", {}).get("slow", {}).get("wrong"))
            print(f"run {k + 1}: server {run['server']['texts_per_second']:.2f} texts/s"
                  + (f", batch {run['batch']['texts_per_second']:.2f}, ratio {run['ratio_server_to_batch']:.2f}"
                     if "batch" in run else ""), flush=True)
        results["rss_mib_lifetime_peak_VmHWM"] = proc_status(server.pid)["VmHWM"] / 1024
        stop_start = time.monotonic()
        server.send_signal(signal.SIGTERM)
        try:
            results["sigterm_exit"] = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            results["sigterm_exit"] = None
        results["sigterm_seconds"] = round(time.monotonic() - stop_start, 2)
    finally:
        if server.poll() is None:
            server.kill()
    ratios = [r["ratio_server_to_batch"] for r in results["runs"] if "ratio_server_to_batch" in r]
    if ratios:
        results["ratio_server_to_batch"] = {"min": min(ratios), "median": statistics.median(ratios),
                                            "max": max(ratios)}
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    if failed:
        print(f"server log: {log}", file=sys.stderr)
        sys.exit(1)


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each of the process's threads."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = cpu_seconds(pid, int(tid))
        except OSError:
            continue
    return out


def measure(args: argparse.Namespace, pid: int, port: int, texts: list[str], counter: itertools.count[int],
            parameters: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """One measured load of ``args.seconds``, then the batch job on the texts it sent."""
    run: dict[str, Any] = {"load_average_before": load_average()}
    first_text = next(counter)  # the measured requests' texts start here
    monitor = RssMonitor(pid)
    monitor.start()
    rss_start = proc_status(pid)["VmRSS"]
    cpu_start, threads_start = cpu_seconds(pid), thread_cpu(pid)
    own_start = resource.getrusage(resource.RUSAGE_SELF)
    clients, start, end, slows, stalls = run_clients(port, texts, counter, args.clients, args.seconds, parameters,
                                                     args.timeout, args.slow, args.slow_seconds, args.stalled)
    cpu_end, threads_end = cpu_seconds(pid), thread_cpu(pid)
    own_end = resource.getrusage(resource.RUSAGE_SELF)
    monitor.done.set()
    rss_end = proc_status(pid)["VmRSS"]

    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    engine: list[float] = []
    wrong: list[str] = []
    for c in clients:
        statuses.update(c.record.statuses)
        latencies += c.record.latencies
        engine += c.record.engine
        wrong += c.record.wrong
    sent = sum(c.record.sent for c in clients)
    answered = sum(c.record.answered for c in clients)
    ok = sum(c.record.texts_ok for c in clients)
    wall = end - start
    server_cpu = cpu_end - cpu_start
    loop_cpu = threads_end.get(pid, 0.0) - threads_start.get(pid, 0.0)  # the main thread runs the event loop
    own_cpu = own_end.ru_utime + own_end.ru_stime - own_start.ru_utime - own_start.ru_stime
    run["server"] = {
        "wall_seconds": round(wall, 3), "sent": sent, "answered": answered, "explained": ok,
        "every_request_answered_once": sent == answered and not wrong,
        "statuses": dict(statuses), "5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
        "undocumented_5xx": sum(n for s, n in statuses.items() if s.startswith("5") and s not in ("503", "504")),
        "wrong_answers": wrong[:20],
        "texts_per_second": ok / wall,
        "latency_seconds": {"p50": percentile(latencies, 50), "p90": percentile(latencies, 90),
                            "p99": percentile(latencies, 99), "max": max(latencies, default=float("nan")),
                            "mean": statistics.fmean(latencies) if latencies else float("nan")},
        "cpu_seconds": round(server_cpu, 2), "cpu_cores_used": server_cpu / wall,
        "cpu_ms_per_text": 1000 * server_cpu / max(ok, 1),
        "event_loop_cpu_ms_per_request": 1000 * loop_cpu / max(answered, 1),
        "client_cpu_seconds": round(own_cpu, 2),
        "rss_mib": {"at_load_start": rss_start / 1024, "peak_during_load": monitor.peak / 1024,
                    "at_load_end": rss_end / 1024},
        # Little's law: requests in the server, and texts in its engine (queued or running), on average;
        # one text per request, so the second is how many texts share the engine's runs (at most)
        "requests_in_server": sum(latencies) / wall, "texts_in_engine": sum(engine) / wall,
        "engine_seconds": {"p50": percentile(engine, 50), "p99": percentile(engine, 99)},
        # what the request spent outside the engine: HTTP, JSON both ways, the event loop
        "outside_engine_ms_p50": 1000 * (percentile(latencies, 50) - percentile(engine, 50)),
    }
    if slows or stalls:
        run["hostile"] = hostile(clients, slows, stalls, wall)
    if not args.no_batch:
        n = args.batch_texts or max(32, min(ok, len(texts)))
        print(f"batch job on {n} texts...", flush=True)
        b = run["batch"] = run_batch_job(args, [texts[(first_text + i) % len(texts)] for i in range(n)], tmp)
        run["ratio_server_to_batch"] = run["server"]["texts_per_second"] / b["texts_per_second"]
        # on a shared machine the wall-clock ratio moves with the others' load; CPU per text less so
        run["cpu_ratio_batch_to_server"] = (b["cpu_seconds"] / max(b["explained"], 1)) / (server_cpu / max(ok, 1))
    run["load_average_after"] = load_average()
    return run


def hostile(clients: list[Client], slows: list[Client], stalls: list[Stalled], wall: float) -> dict[str, Any]:
    """What the slow and stalled clients got, and the normal clients' latency beside them."""
    lat = sorted(x for c in clients for x in c.record.latencies)
    slow_lat = [x for c in slows for x in c.record.latencies]
    answers: Counter[str] = Counter()
    for t in stalls:
        answers.update(t.answers)
    return {
        "normal": {"requests": len(lat), "p50": percentile(lat, 50), "p99": percentile(lat, 99),
                   "max": max(lat, default=float("nan")), "over_1s": sum(x > 1.0 for x in lat)},
        "slow": {"clients": len(slows), "sent": sum(c.record.sent for c in slows),
                 "answered": sum(c.record.answered for c in slows),
                 "explained": sum(c.record.texts_ok for c in slows),
                 "statuses": dict(sum((c.record.statuses for c in slows), Counter())),
                 "wrong": [w for c in slows for w in c.record.wrong][:20],
                 "p50": percentile(slow_lat, 50), "p99": percentile(slow_lat, 99)},
        "stalled": {"connections": len(stalls), "opened": sum(t.opened for t in stalls), "answers": dict(answers)},
        "served_per_second": (len(lat) + len(slow_lat)) / wall,
    }


def report(results: dict[str, Any]) -> None:
    """Each run in detail, then (with --repeat) one line per run."""
    for k, r in enumerate(results["runs"]):
        s = r["server"]
        lat, rss = s["latency_seconds"], s["rss_mib"]
        rows = [
            ("run", f"{k + 1} of {len(results['runs'])}"),
            ("model", results["model"]), ("parameters", json.dumps(results["parameters"])
                                          + (f"; serve {results['server_args']}" if results["server_args"] else "")),
            ("clients x seconds", f"{results['clients']} x {results['seconds']:g} (measured wall "
                                  f"{s['wall_seconds']:.1f} s, until the last answer)"),
            ("server texts/s", f"{s['texts_per_second']:.2f}"),
            ("latency p50 / p90 / p99 / max", f"{lat['p50']*1000:.0f} / {lat['p90']*1000:.0f} / "
                                              f"{lat['p99']*1000:.0f} / {lat['max']*1000:.0f} ms"),
            ("in the server / in the engine", f"{s['requests_in_server']:.1f} requests / "
                                              f"{s['texts_in_engine']:.1f} texts (mean); engine p50 "
                                              f"{s['engine_seconds']['p50']*1000:.0f} ms, outside it "
                                              f"{s['outside_engine_ms_p50']:.0f} ms"),
            ("statuses", ", ".join(f"{k}: {v}" for k, v in sorted(s["statuses"].items()))),
            ("sent / answered / explained", f"{s['sent']} / {s['answered']} / {s['explained']}"),
            ("every request answered once", f"{s['every_request_answered_once']} ({len(s['wrong_answers'])} wrong)"),
            ("undocumented 5xx", str(s["undocumented_5xx"])),
            ("server CPU", f"{s['cpu_seconds']:.1f} s = {s['cpu_cores_used']:.2f} cores, "
                           f"{s['cpu_ms_per_text']:.1f} ms per text (event loop "
                           f"{s['event_loop_cpu_ms_per_request']:.2f} ms per request)"),
            ("clients' CPU", f"{s['client_cpu_seconds']:.1f} s"),
            ("server RSS MiB", f"start {rss['at_load_start']:.0f}, peak {rss['peak_during_load']:.0f}, "
                               f"end {rss['at_load_end']:.0f}"),
        ]
        if "batch" in r:
            b = r["batch"]
            rows += [
                ("batch texts/s", f"{b['texts_per_second']:.2f} ({b['explained']} texts in {b['seconds']:.1f} s, "
                                  f"CPU {b['cpu_seconds']:.1f} s = {b['cpu_seconds'] / b['seconds']:.2f} cores, "
                                  f"{1000 * b['cpu_seconds'] / max(b['explained'], 1):.1f} ms per text, "
                                  f"peak RSS {b['peak_rss_kib'] / 1024:.0f} MiB)"),
                ("server / batch", f"{r['ratio_server_to_batch']:.2f} texts/s; CPU per text: batch's / server's "
                                   f"{r['cpu_ratio_batch_to_server']:.2f}"),
            ]
        if "hostile" in r:
            h = r["hostile"]
            n, sl, st = h["normal"], h["slow"], h["stalled"]
            rows += [
                ("normal clients beside them", f"{n['requests']} requests, p50 {n['p50']*1000:.0f} ms, p99 "
                                               f"{n['p99']*1000:.0f} ms, max {n['max']*1000:.0f} ms, "
                                               f"{n['over_1s']} over 1 s"),
                ("slow clients", f"{sl['clients']}: {sl['sent']} sent / {sl['answered']} answered / "
                                 f"{sl['explained']} explained, p50 {sl['p50']*1000:.0f} ms, "
                                 f"statuses {sl['statuses']}, {len(sl['wrong'])} wrong"),
                ("stalled connections", f"{st['connections']} at a time, {st['opened']} opened; what they got: "
                                        + ", ".join(f"{k}: {v}" for k, v in sorted(st["answers"].items()))),
                ("served", f"{h['served_per_second']:.2f} requests/s (normal and slow)"),
            ]
        rows += [("load average before / after", f"{r['load_average_before']} / {r['load_average_after']}")]
        _table(rows)
        print()
    tail = [("server lifetime peak RSS (VmHWM)", f"{results['rss_mib_lifetime_peak_VmHWM']:.0f} MiB"),
            ("SIGTERM", f"exit {results['sigterm_exit']} after {results['sigterm_seconds']:.2f} s "
                        "(0: drained)")]
    if "ratio_server_to_batch" in results and len(results["runs"]) > 1:
        q = results["ratio_server_to_batch"]
        tail.append(("server / batch over the runs", f"min {q['min']:.2f}, median {q['median']:.2f}, "
                                                     f"max {q['max']:.2f}"))
    _table(tail)


def _table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
