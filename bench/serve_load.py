"""A bounded load test of ``artclf serve``: good paintings mixed with every kind of bad request.

    python -m bench.serve_load [--model FILE] [--clients 8] [--requests 400] [--seconds 120]
                               [--slow 4] [--paintings 12] [--max-mp 12] [--concurrency 4]
                               [--max-bytes 20971520]
                               [--max-pixels 25000000] [--request-timeout 5] [--max-rss-mb N]
                               [--json OUT]

Starts a real ``artclf serve`` on a free loopback port (without ``--model``: an untrained
ResNet-50 at 512 px, the recipe's shape, saved as ``model.pt``), then ``--clients`` threads
post requests until ``--requests`` are answered or ``--seconds`` passed, whichever first.
Request kinds, in a fixed seeded mix:

* ``good``: JPEGs of paintings (``sample-data`` styles, 0.3 to ``--max-mp`` MP) and a PNG just under
  ``--max-pixels`` (the largest decode the server must do: PNG has no reduced-size decode);
  expected 200 with the top-5 artists and probabilities the same backend gives in this process;
* ``oversize`` (body over ``--max-bytes``) 413; ``bomb`` (a PNG declaring more than
  ``--max-pixels``) 413; ``truncated`` (a cut JPEG) 400; ``not_image`` (text as text/plain) 415;
  ``wrong_format`` (an ICO, a format not served, labelled image/x-icon) 400;
* ``slow``: ``--slow`` extra clients send headers, then trickle the body slower than
  ``--request-timeout``: expected 408 and a closed connection.

Meanwhile the server's resident memory is sampled from ``/proc``; its peak (``VmHWM``) is read
at the end. Prints requests/s, p50/p95/p99 latency of the good requests, the count of each
status per kind, and the peak RSS against the idle RSS. Exit 1 when any good answer is wrong,
any request got another status than its kind's (a 5xx included), the server died, or the peak
RSS is over the bound: ``--max-rss-mb``, or by default what the limits allow: the idle RSS
plus, for each of ``--concurrency`` slots, an upload (``--max-bytes``), its decode at 4 bytes
per pixel (RGBA, ``--max-pixels``) and ``SLACK_MB`` for the rest.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from artclf.sample_data.paintings import make_styles, paint, rng_for

EXPECTED = {
    "good": 200,
    "oversize": 413,
    "bomb": 413,
    "truncated": 400,
    "not_image": 415,
    "wrong_format": 400,
}
MIX = {"good": 10, "oversize": 1, "bomb": 1, "truncated": 1, "not_image": 1, "wrong_format": 1}
BOUNDARY = "serve-load-7c1f"
# per --concurrency slot beyond the upload and its RGBA decode: the reduced copy, the model
# input and one inference's activations (ResNet-50 at 512 px: tens of MB), allocator slack
SLACK_MB = 128


def multipart(data: bytes, filename: str, ctype: str) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: {ctype}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def paintings(n: int, max_mp: float, seed: int = 0) -> list[tuple[str, bytes]]:
    """``n`` JPEGs of sample-data paintings, 0.3 to ``max_mp`` MP (Kaggle's originals: up to ~12)."""
    styles = make_styles(seed)
    out = []
    for i in range(n):
        rng = rng_for(seed, 99, i)
        mp = float(np.clip(rng.lognormal(np.log(1.5), 0.8), 0.3, max_mp))
        w = int((mp * 1e6 * rng.uniform(0.7, 1.4)) ** 0.5)
        h = int(mp * 1e6 / w)
        buf = io.BytesIO()
        paint(styles[i % len(styles)], (w, h), rng).save(buf, "JPEG", quality=90)
        out.append((f"painting_{i}.jpg", buf.getvalue()))
    return out


def largest_png(max_pixels: int) -> tuple[str, bytes]:
    """A PNG just under the pixel cap that compresses well (a few colour bands)."""
    side = int(max_pixels**0.5) - 8
    a = np.zeros((side, side, 3), np.uint8)
    for k in range(8):
        a[k * side // 8 : (k + 1) * side // 8] = (30 * k, 255 - 30 * k, 128)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG", compress_level=9)
    return f"bands_{side}x{side}.png", buf.getvalue()


def bad_requests(max_bytes: int, max_pixels: int, jpeg: bytes) -> dict[str, tuple[bytes, str, str]]:
    side = int((2 * max_pixels) ** 0.5) + 16
    bomb = io.BytesIO()
    Image.new("L", (side, side)).save(bomb, "PNG", compress_level=9)  # 2× the cap in a few kB
    ico = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(ico, "ICO")
    return {
        "oversize": (np.random.default_rng(1).bytes(max_bytes + 1024), "big.jpg", "image/jpeg"),
        "bomb": (bomb.getvalue(), "bomb.png", "image/png"),
        "truncated": (jpeg[: len(jpeg) // 2], "cut.jpg", "image/jpeg"),
        "not_image": (b"these are notes, not a painting\n" * 20, "notes.txt", "text/plain"),
        "wrong_format": (ico.getvalue(), "icon.ico", "image/x-icon"),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def _response(f) -> tuple[int, dict]:
    """One HTTP/1.1 response from a socket file: status and (JSON) body."""
    status = int(f.readline().split()[1])
    length = 0
    while (line := f.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    raw = f.read(length)
    try:
        return status, json.loads(raw) if raw else {}
    except ValueError:
        return status, {"raw": raw[:200].decode(errors="replace")}


def post(port: int, body: bytes, timeout: float) -> tuple[int, dict, float]:
    """POST /predict the way curl sends a big upload: headers with ``Expect: 100-continue``,
    the body only after the server's ``100 Continue``; a server that refuses the body by its
    length answers at once (http.client would send all of it into a closed connection)."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s, s.makefile("rb") as f:
        s.sendall(
            (
                "POST /predict?top_k=5 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
            ).encode()
        )
        status, answer = _response(f)
        if status == 100:
            s.sendall(body)
            status, answer = _response(f)
    return status, answer, time.perf_counter() - t0


def slow_client(port: int, body: bytes, every: float, cap: float) -> tuple[int | str, float]:
    """Headers at once, then the body 16 bytes per ``every`` s: what the server answers, and
    when (``cap`` seconds at most)."""
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        s.sendall(
            (
                f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                f"boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
        )
        s.settimeout(every)
        sent = 0
        while time.perf_counter() - t0 < cap:
            try:
                got = s.recv(4096)
            except TimeoutError:
                got = None
            if got is not None:  # the server answered, or closed, before the body was in
                status = int(got.split()[1]) if got.startswith(b"HTTP/1.1 ") else "closed"
                return status, time.perf_counter() - t0
            if sent < len(body):
                try:
                    s.sendall(body[sent : sent + 16])
                except OSError:
                    return "closed", time.perf_counter() - t0
                sent += 16
        return "no answer", time.perf_counter() - t0
    finally:
        s.close()


def default_model(folder: Path) -> Path:
    from artclf.artists import ARTISTS, class_names
    from artclf.model import build_model, save_model
    from artclf.transforms import Preprocess

    pre = Preprocess()  # 512 px, the recipe's input
    classes = class_names([a.name for a in ARTISTS])
    model = build_model("resnet50", "none", len(classes), pre)
    path = folder / "model.pt"
    save_model(path, model, classes, pre, "resnet50", {})
    return path


def start_server(args, model: Path, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "artclf", "serve", "--model", str(model), "--port", str(port),
           "--concurrency", str(args.concurrency), "--max-bytes", str(args.max_bytes),
           "--max-pixels", str(args.max_pixels), "--request-timeout", str(args.request_timeout),
           "--threads", str(args.threads)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"serve ended (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                if f"127.0.0.1:{port}" in log.read_text():
                    return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"serve did not listen on port {port} in 300 s:\n{log.read_text()[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model", type=Path, help="model.pt or model.onnx (default: untrained ResNet-50, 512 px)"
    )
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--slow", type=int, default=4, help="extra clients that trickle their body")
    ap.add_argument("--paintings", type=int, default=12, help="distinct good JPEGs")
    ap.add_argument("--max-mp", type=float, default=12.0, help="largest good JPEG, megapixels")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="serve --threads")
    ap.add_argument("--max-bytes", type=int, default=20 * 2**20)
    ap.add_argument("--max-pixels", type=int, default=25_000_000)
    ap.add_argument("--request-timeout", type=float, default=5.0)
    ap.add_argument("--max-rss-mb", type=float, default=None, help="fail when the server's peak RSS is above")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)

    from artclf.inference import load_image
    from artclf.serve import load_backend

    tmp = Path(tempfile.mkdtemp(prefix="serve_load."))
    model = args.model or default_model(tmp)
    backend = load_backend(model, threads=args.threads)
    good = paintings(args.paintings, args.max_mp) + [largest_png(args.max_pixels)]
    too_big = [name for name, data in good if len(multipart(data, name, "image/jpeg")) > args.max_bytes]
    if too_big:
        raise SystemExit(f"good images over --max-bytes {args.max_bytes}: {too_big}; lower --max-mp")
    expect = {}  # filename -> (top-5 classes, probabilities) from the backend in this process
    for name, data in good:
        p = backend.probs(load_image(data, backend.pre, args.max_pixels)[None])[0]
        order = np.argsort(-p, kind="stable")[:5]
        expect[name] = ([backend.classes[i] for i in order], p[order])
    bad = bad_requests(args.max_bytes, args.max_pixels, good[0][1])
    kinds = [k for k, n in MIX.items() for _ in range(n)]
    np.random.default_rng(0).shuffle(kinds)
    del backend

    port = free_port()
    log = tmp / "serve.log"
    proc = start_server(args, model, port, log)
    idle_kib = rss_kib(proc.pid)
    if args.max_rss_mb is not None:
        bound_mb, how = args.max_rss_mb, "--max-rss-mb"
    else:  # what each of --concurrency slots may hold at once, on top of the idle server
        slot = args.max_bytes + 4 * args.max_pixels + SLACK_MB * 2**20
        bound_mb = idle_kib / 1024 + args.concurrency * slot / 2**20
        how = (
            f"idle {idle_kib / 1024:.0f} MB + concurrency {args.concurrency} x (max bytes "
            f"{args.max_bytes / 2**20:.0f} MB + 4 B x max pixels {args.max_pixels / 1e6:.0f} M "
            f"+ {SLACK_MB} MB)"
        )
    results: list[tuple[str, int | str, float, bool]] = []  # kind, status, seconds, answer right
    lock, done, done_good, stop = threading.Lock(), [0], [0], threading.Event()
    samples: list[int] = []

    def sampler() -> None:
        while not stop.is_set() and proc.poll() is None:
            samples.append(rss_kib(proc.pid))
            time.sleep(0.05)

    def client(c: int) -> None:
        while not stop.is_set():
            with lock:  # every kind in each run of len(kinds) requests; the good ones in turn
                if done[0] >= args.requests:
                    return
                kind = kinds[done[0] % len(kinds)]
                done[0] += 1
                if kind == "good":
                    name, data = good[done_good[0] % len(good)]
                    done_good[0] += 1
            if kind == "good":
                body = multipart(data, name, "image/png" if name.endswith(".png") else "image/jpeg")
            else:
                data, name, ctype = bad[kind]
                body = multipart(data, name, ctype)
            try:
                status, answer, dt = post(port, body, timeout=300)
            except OSError as e:  # a reset: not an HTTP status at all
                status, answer, dt = f"error {type(e).__name__}", {}, 0.0
            right = True
            if kind == "good" and status == 200:
                classes, probs = expect[name]
                right = [t["class"] for t in answer["top_k"]] == classes and np.allclose(
                    [t["probability"] for t in answer["top_k"]], probs, atol=1e-4
                )
            with lock:
                results.append((kind, status, dt, right))

    slow_body = multipart(good[0][1][:4096], "slow.jpg", "image/jpeg")
    slow_out: list[tuple[int | str, float]] = []
    every = max(0.5, args.request_timeout / 4)

    def slow(c: int) -> None:
        while not stop.is_set():  # one trickling upload after another while the load lasts
            slow_out.append(slow_client(port, slow_body, every, cap=4 * args.request_timeout + 30))

    threads = [threading.Thread(target=sampler)]
    threads += [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
    threads += [threading.Thread(target=slow, args=(c,)) for c in range(args.slow)]
    t0 = time.perf_counter()
    try:
        for t in threads:
            t.start()
        deadline = t0 + args.seconds
        for t in threads[1 : 1 + args.clients]:
            t.join(max(0.0, deadline - time.perf_counter()))
        stop.set()
        for t in threads:
            t.join(args.request_timeout * 4 + 300)
        wall = time.perf_counter() - t0
        alive = proc.poll() is None
        peak_kib = rss_kib(proc.pid, "VmHWM") if alive else max(samples, default=0)
        health_ok = False
        if alive:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/health")
            health_ok = conn.getresponse().status == 200
            conn.close()
    finally:
        stop.set()
        os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()

    statuses: dict[str, Counter] = defaultdict(Counter)
    for kind, status, _, _ in results:
        statuses[kind][status] += 1
    for status, _ in slow_out:
        statuses["slow"][status] += 1
    lat = sorted(dt for kind, status, dt, _ in results if kind == "good" and status == 200)
    wrong_answers = sum(
        1 for kind, status, _, right in results if kind == "good" and status == 200 and not right
    )
    unexpected = {
        k: {str(s): n for s, n in c.items() if s != (408 if k == "slow" else EXPECTED[k])}
        for k, c in statuses.items()
    }
    unexpected = {k: v for k, v in unexpected.items() if v}
    fivexx = sum(n for c in statuses.values() for s, n in c.items() if isinstance(s, int) and s >= 500)
    pct = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: float("nan"))
    figures = {
        "requests": len(results),
        "slow_clients": len(slow_out),
        "wall_s": wall,
        "requests_per_s": len(results) / wall,
        "good_per_s": len(lat) / wall,
        "latency_ms": {"p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99)},
        "statuses": {k: {str(s): n for s, n in c.items()} for k, c in sorted(statuses.items())},
        "wrong_answers": wrong_answers,
        "unexpected": unexpected,
        "5xx": fivexx,
        "server_alive": alive and health_ok,
        "rss_mb": {"idle": idle_kib / 1024, "peak": peak_kib / 1024, "bound": bound_mb, "bound_is": how},
        "largest_png": good[-1][0],
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": str(model),
        "machine": f"{platform.node()} {os.cpu_count()} cpus, Python {platform.python_version()}",
    }
    print(json.dumps(figures, indent=1))
    print(
        f"\n{len(results)} requests + {len(slow_out)} slow clients in {wall:.1f} s: "
        f"{figures['requests_per_s']:.2f} req/s ({figures['good_per_s']:.2f} good/s); good latency p50 "
        f"{pct(0.5):.0f} ms, p95 {pct(0.95):.0f} ms, p99 {pct(0.99):.0f} ms; server RSS idle "
        f"{idle_kib / 1024:.0f} MB, peak {peak_kib / 1024:.0f} MB"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    problems = []
    if wrong_answers:
        problems.append(f"{wrong_answers} good request(s) answered wrongly")
    if unexpected:
        problems.append(f"unexpected statuses {unexpected}")
    if not figures["server_alive"]:
        problems.append("the server died or stopped answering /health")
    if peak_kib / 1024 > bound_mb:
        problems.append(f"peak RSS {peak_kib / 1024:.0f} MB over the bound {bound_mb:.0f} MB ({how})")
    if not lat:
        problems.append("no good request was answered")
    for p in problems:
        print(f"serve_load: FAIL: {p}", file=sys.stderr)
    if problems:
        print(f"server log (kept): {log}", file=sys.stderr)
        return 1
    shutil.rmtree(tmp)  # the server log and the default model.pt (~100 MB) go on success
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
