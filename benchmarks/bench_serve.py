"""Load test and soak of ``seewhy serve`` on loopback: concurrent clients asking for Grad-CAM maps of the bundled photos
from efficientnet_lite0; every answer checked against a direct ``seewhy.explain`` of the same image; requests/s,
p50/p95 latency, and the server's resident memory before and after a soak.

Run:  python benchmarks/bench_serve.py [--clients 50] [--requests 4] [--soak 300] [--soak-clients 8] [--workers 1]
      smoke run: python benchmarks/bench_serve.py --clients 4 --requests 2 --soak 16 --out -

The server runs in a child process (``create_app(["efficientnet_lite0"], queue_size=clients, workers=...)`` under
uvicorn on 127.0.0.1 and a free port; the queue holds every client, so that no request is turned away), so that its
memory (VmRSS from /proc/PID/status) is its own. The clients are threads with one ``httpx.Client`` each; they send the
PNG bytes that ``GET /api/images/NAME`` serves (what the page uploads), client i's request j the photo (i + j) mod 4.
Correct: HTTP 200, and ``target`` and ``label`` equal to those of ``seewhy.explain(model, x, "gradcam")`` on the same
bytes decoded and preprocessed as the server does, in this process. Latency: from sending the request to the whole
answer read. The soak sends ``--soak`` more requests from ``--soak-clients`` clients after the load test and samples
the server's RSS every ``--soak-every`` requests: flat memory means the last samples do not keep rising.
Everything is bounded: ``--deadline`` seconds in all, then the server is stopped and the run fails.
Writes benchmarks/results/serve.md.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, environment, table, write  # noqa: E402

import seewhy  # noqa: E402
from seewhy import images, zoo  # noqa: E402

MODEL = "efficientnet_lite0"
HOST = "127.0.0.1"  # loopback only
_SERVER = """
import sys, uvicorn
from seewhy.serve import create_app
app = create_app([sys.argv[1]], queue_size=int(sys.argv[2]), workers=int(sys.argv[3]), preload=True)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[4]), log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def start_server(port: int, queue_size: int, workers: int, deadline: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, MODEL, str(queue_size), str(workers), str(port)])
    url = f"http://{HOST}:{port}/api/health"
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start before the deadline")


def references(base: str) -> dict[str, tuple[bytes, int, str]]:
    """Per bundled photo: the PNG the server serves, and the (target, label) of a direct seewhy.explain on it."""
    model, spec = zoo.load_model(MODEL)
    names = zoo.class_names(model)
    out = {}
    for name in images.BUNDLED:
        data = httpx.get(f"{base}/api/images/{name}", timeout=60).content
        x = spec.preprocess(Image.open(io.BytesIO(data)).convert("RGB")).unsqueeze(0)
        exp = seewhy.explain(model, x, "gradcam", layer=spec.cam_layer)
        t = int(exp.targets[0])
        out[name] = (data, t, names[t])
    return out


def run_clients(base: str, refs: dict[str, tuple[bytes, int, str]], clients: int, per_client: int, deadline: float,
                offset: int = 0) -> tuple[list[float], list[str], float]:
    """``clients`` threads x ``per_client`` requests; returns (latencies of the correct answers, errors, wall s)."""
    photos = list(refs)
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []

    def client(i: int) -> None:
        with httpx.Client(base_url=base, timeout=max(1.0, deadline - time.time())) as http:
            for j in range(per_client):
                name = photos[(i + j + offset) % len(photos)]
                data, target, label = refs[name]
                t0 = time.perf_counter()
                try:
                    r = http.post("/api/explain", files={"image": (f"{name}.png", data, "image/png")},
                                  data={"model": MODEL, "method": "gradcam"})
                    seconds = time.perf_counter() - t0
                    ok = r.status_code == 200
                    answer = r.json() if ok else {}
                    problem = (f"{name}: HTTP {r.status_code} {r.text[:120]}" if not ok else
                               f"{name}: got {answer.get('target')} {answer.get('label')!r}, expected {target} "
                               f"{label!r}" if (answer.get("target"), answer.get("label")) != (target, label) else "")
                except httpx.HTTPError as err:
                    seconds, problem = time.perf_counter() - t0, f"{name}: {type(err).__name__}: {err}"
                with lock:
                    (errors.append(problem) if problem else latencies.append(seconds))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return latencies, errors, time.perf_counter() - t0


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--workers", type=int, default=1, help="model workers of the server")
    parser.add_argument("--soak", type=int, default=300, help="requests of the soak (0: none)")
    parser.add_argument("--soak-clients", type=int, default=8)
    parser.add_argument("--soak-every", type=int, default=50, help="sample the server's RSS every N soak requests")
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds for the whole run")
    parser.add_argument("--out", default=str(RESULTS / "serve.md"), help="results file ('-': print only)")
    args = parser.parse_args()
    deadline = time.time() + args.deadline
    port = free_port()
    base = f"http://{HOST}:{port}"
    proc = start_server(port, max(args.clients, args.soak_clients), args.workers, deadline)
    try:
        refs = references(base)
        _, warm_errors, _ = run_clients(base, refs, len(refs), 1, deadline)  # one request per photo: warm-up
        rss_start = rss_mb(proc.pid)
        lat, errors, wall = run_clients(base, refs, args.clients, args.requests, deadline)
        rss_load = rss_mb(proc.pid)
        samples = [(0, rss_load)]
        soak_errors: list[str] = []
        done = 0
        while done < args.soak and time.time() < deadline:
            n = min(args.soak_every, args.soak - done)
            per = max(1, n // args.soak_clients)
            _, errs, _ = run_clients(base, refs, min(args.soak_clients, n), per, deadline, offset=done)
            soak_errors += errs
            done += min(args.soak_clients, n) * per
            samples.append((done, rss_mb(proc.pid)))
        if time.time() >= deadline:
            soak_errors.append("deadline reached")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()

    total = args.clients * args.requests
    all_errors = warm_errors + errors + soak_errors
    rows = [[f"{args.clients} x {args.requests}", total, len(lat), len(errors), f"{len(lat) / wall:.2f}",
             f"{percentile(lat, 50):.2f}" if lat else "-", f"{percentile(lat, 95):.2f}" if lat else "-",
             f"{max(lat):.2f}" if lat else "-", f"{wall:.1f}"]]
    load = table(["clients x requests", "requests", "correct", "errors", "requests/s", "p50 s", "p95 s", "max s",
                  "wall s"], rows, right=[False, *[True] * 8])
    soak = table(["soak requests done", "server RSS MB"], [[n, f"{mb:.0f}"] for n, mb in samples], right=[True, True])
    growth = samples[-1][1] - samples[0][1]
    half = samples[len(samples) // 2][1]
    text = f"""# seewhy serve: load test and soak (gradcam, {MODEL}, loopback)

{environment(f"; server: {args.workers} model worker(s), queue of {max(args.clients, args.soak_clients)}")}

Method: see the docstring of `benchmarks/bench_serve.py`. Every answer is checked against a direct
`seewhy.explain(model, x, "gradcam")` of the same PNG bytes (target index and label). Latency includes the wait in
the server's queue (one model worker runs the requests one at a time).

## Load

{load}

Photos: {", ".join(f"{n} -> {t} {lab!r}" for n, (_, t, lab) in refs.items())}

## Memory over the soak ({args.soak} requests, {args.soak_clients} clients)

Server RSS after the warm-up: {rss_start:.0f} MB; after the load test: {rss_load:.0f} MB; after the soak:
{samples[-1][1]:.0f} MB ({growth:+.0f} MB over the soak; {samples[-1][1] - half:+.0f} MB over its second half).

{soak}

Errors: {len(all_errors)}{"" if not all_errors else chr(10) + chr(10).join("- " + e for e in all_errors[:20])}
"""
    write(text, None if args.out == "-" else Path(args.out))
    return 1 if all_errors else 0


if __name__ == "__main__":
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))  # the references; the server has its own process
    sys.exit(main())
