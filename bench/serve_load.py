"""A bounded load test of ``artclf serve``: paintings, heat maps and every kind of bad request.

``python -m bench.serve_load [--model FILE] [--clients 8] [--requests 400] …`` (``--help``)
starts a real ``artclf serve`` on a free loopback port (without ``--model``: an untrained
ResNet-50 at 512 px, the recipe's shape), then ``--clients`` threads post requests until
``--requests`` are answered or ``--seconds`` passed. Request kinds, in a fixed seeded mix:

* ``good``: JPEGs of paintings (``sample-data`` styles, 0.3 to ``--max-mp`` MP), ``--phones``
  phone photos of a painting (``--phone-mp``, 4:3, default 48 MP: over ``--max-pixels`` as
  declared, decoded at 1/8) and a PNG just under ``--max-pixels`` (the largest decode: PNG has
  no reduced-size decode): 200, the file's name, the top 5 and probabilities this process's
  backend gives, no heat map; every ``--explain-every``-th is an ``explain`` (PyTorch
  backend): ``?explain=1``, the same answer and a heat map, a PNG of the whole decoded upload
  (long side 512 to 1024 px, its aspect ratio within 2 %);
* ``oversize`` (body over ``--max-bytes``) 413; ``bomb`` (a PNG declaring more than
  ``--max-pixels``) 413; ``truncated`` (a cut JPEG) 400; ``not_image`` (text/plain) 415;
  ``wrong_format`` (an ICO, labelled image/x-icon) 400;
* ``slow``: ``--slow`` more clients trickle their body slower than ``--request-timeout``: 408.

First, in this process (one image, one thread, median of ``--cost-reps``), what heat maps cost:
the forward and gradient of serve's traced split (:class:`artclf.explain.GradCam`, no hook on
the shared model) against the baseline, a forward hook on the model (what a hook on a private
copy runs), and the tensors each design holds beside the model. Prints requests/s, p50/p95/p99
latency of plain and heat-map requests, each kind's statuses, the server's idle RSS and peak
(``VmHWM``). Exit 1 when an answer is wrong, a request got another status than its kind's (a
5xx or a dropped connection included), the server died, or the peak RSS is over ``--max-rss-mb``,
by default what the limits allow: idle RSS plus, for each of ``--concurrency`` slots, an upload
(``--max-bytes``), its decode at 4 B a pixel (RGBA, ``--max-pixels``) and ``SLACK_MB``; a
phone photo's reduced decode is far below that, so the bound is the same with them.
"""

from __future__ import annotations

import argparse
import base64
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

EXPECTED = {"good": 200, "explain": 200, "oversize": 413, "bomb": 413, "truncated": 400,
            "not_image": 415, "wrong_format": 400, "slow": 408}  # fmt: skip
MIX = {"good": 10, "oversize": 1, "bomb": 1, "truncated": 1, "not_image": 1, "wrong_format": 1}
BOUNDARY = "serve-load-7c1f"
# per --concurrency slot beyond the upload and its RGBA decode: the reduced copy, the model
# input and one inference's activations (ResNet-50 at 512 px: tens of MB), allocator slack
SLACK_MB = 128


def multipart(data: bytes, filename: str, ctype: str) -> bytes:
    head = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
    return (head + f"Content-Type: {ctype}\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


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


def phones(n: int, mp: float, seed: int = 0) -> list[tuple[str, bytes]]:
    """``n`` phone photos of sample-data paintings, ``mp`` megapixels at 4:3 (a 48 MP camera
    writes 8000 × 6000): painted small and enlarged, so smoother than a real photo and a few MB
    (a real one is 8 to 15 MB: the body size is --max-bytes's business, not this)."""
    styles, out = make_styles(seed), []
    w = int((mp * 1e6 * 4 / 3) ** 0.5)
    for i in range(n):
        small = paint(styles[(i + 5) % len(styles)], (w // 8, w * 3 // 32), rng_for(seed, 98, i))
        buf = io.BytesIO()
        small.resize((w, w * 3 // 4), Image.Resampling.BILINEAR).save(buf, "JPEG", quality=85)
        out.append((f"phone_{i}_{w}x{w * 3 // 4}.jpg", buf.getvalue()))
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


def post(port: int, body: bytes, timeout: float, query: str = "top_k=5") -> tuple[int, dict, float]:
    """POST /predict the way curl sends a big upload: headers with ``Expect: 100-continue``,
    the body only after the server's ``100 Continue``; a server that refuses the body by its
    length answers at once (http.client would send all of it into a closed connection)."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s, s.makefile("rb") as f:
        s.sendall(f"POST /predict?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                  f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                  f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode())  # fmt: skip
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
        s.sendall(f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                  f"boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n".encode())  # fmt: skip
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
           "--max-pixels", str(args.max_pixels), "--max-declared-pixels", str(args.max_declared_pixels),
           "--request-timeout", str(args.request_timeout),
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


def heat_map_cost(backend, x, reps: int) -> dict:
    """ms of a prediction and of the part of a heat map the designs differ in (forward and
    gradient), for one uint8 image ``x`` (3×S×S); the MB each design holds beside the model, and
    what autograd keeps during one heat map."""
    import torch

    from artclf.explain import GradCam, target_layer

    model, split = backend.model, GradCam(backend.model)

    def traced() -> None:
        acts, logits = split.scores(x[None])
        torch.autograd.grad(logits[0, int(logits[0].argmax())], acts)

    def hooked() -> None:
        kept = []
        hook = target_layer(model).register_forward_hook(lambda _m, _i, out: kept.append(out))
        with torch.enable_grad():
            logits = model(x[None].clone())
            torch.autograd.grad(logits[0, int(logits[0].argmax())], kept[-1])
        hook.remove()

    fns = {"predict_ms": lambda: backend.probs(x[None]), "split_ms": traced, "hook_ms": hooked}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for rep in range(reps + 1):  # interleaved, so that a busy spell slows all three; 0 warms up
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k] += [1000 * (time.perf_counter() - t0)] if rep else []

    def mb(tensors, besides=()) -> float:
        shared = {t.data_ptr() for t in besides}
        return sum(t.numel() * t.element_size() for t in tensors if t.data_ptr() not in shared) / 2**20

    def kept_mb(fn) -> float:  # what autograd keeps for the gradient (weights included)
        kept = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
            fn()
        return mb({t.data_ptr(): t for t in kept}.values())

    weights = [*model.parameters(), *model.buffers()]
    c = {k: float(np.median(t)) for k, t in times.items()}
    c |= {"split_autograd_mb": kept_mb(traced), "hook_autograd_mb": kept_mb(hooked)}
    c |= {"split_mb": mb([*split.net.parameters(), *split.net.buffers()], weights), "copy_mb": mb(weights)}
    return {**c, "split_over_hook": c["split_ms"] / c["hook_ms"], "reps": reps}


def answer_is_right(answer: dict, name: str, explained: bool, expect: dict) -> bool:
    """The JSON a good request must get: its file, the top 5 of this process, a heat map iff
    asked, of the whole decoded upload (long side in HEAT_MAP_SIDES, its aspect ratio)."""
    from artclf.explain import HEAT_MAP_SIDES

    classes, probs, (w, h) = expect[name]
    right = answer.get("filename") == name and [t["class"] for t in answer["top_k"]] == classes
    right = right and np.allclose([t["probability"] for t in answer["top_k"]], probs, atol=1e-4)
    if "heatmap" not in answer:
        return right and not explained
    head, _, data = answer["heatmap"].partition(",")
    try:
        shape = Image.open(io.BytesIO(base64.b64decode(data))).size
    except Exception:
        return False
    aspect_ok = abs(shape[0] / shape[1] / (w / h) - 1) <= 0.02
    sides_ok = HEAT_MAP_SIDES[0] <= max(shape) <= HEAT_MAP_SIDES[1]
    return right and explained and head == "data:image/png;base64" and aspect_ok and sides_ok


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = ap.add_argument
    add("--model", type=Path, help="model.pt or model.onnx (default: untrained ResNet-50, 512 px)")
    add("--clients", type=int, default=8)
    add("--requests", type=int, default=400)
    add("--seconds", type=float, default=120.0)
    add("--slow", type=int, default=4, help="extra clients that trickle their body")
    add("--paintings", type=int, default=12, help="distinct good JPEGs")
    add("--max-mp", type=float, default=12.0, help="largest good JPEG, megapixels")
    add("--phones", type=int, default=2, help="phone photos among the good JPEGs")
    add("--phone-mp", type=float, default=48.0, help="their size, megapixels (4:3)")
    add("--explain-every", type=int, default=3, help="good requests per heat map (0: none)")
    add("--cost-reps", type=int, default=3, help="timings of each heat-map design (0: skip)")
    add("--concurrency", type=int, default=4)
    add("--threads", type=int, default=0, help="serve --threads")
    add("--max-bytes", type=int, default=20 * 2**20)
    add("--max-pixels", type=int, default=25_000_000)
    add("--max-declared-pixels", type=int, default=400_000_000)
    add("--request-timeout", type=float, default=5.0)
    add("--max-rss-mb", type=float, default=None, help="fail when the server's peak RSS is above")
    add("--json", type=Path, help="write the figures here")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from artclf.inference import load_image, load_picture
    from artclf.serve import load_backend

    tmp = Path(tempfile.mkdtemp(prefix="serve_load."))
    model = args.model or default_model(tmp)
    backend = load_backend(model, threads=args.threads)
    every = args.explain_every if backend.explains else 0
    photos = phones(args.phones, args.phone_mp)
    good = paintings(args.paintings, args.max_mp) + photos + [largest_png(args.max_pixels)]
    too_big = [name for name, data in good if len(multipart(data, name, "image/jpeg")) > args.max_bytes]
    if too_big:
        raise SystemExit(f"good images over --max-bytes {args.max_bytes}: {too_big}; lower --max-mp")
    expect = {}  # filename -> (top-5 classes, probabilities, decoded size) from the backend here
    caps = {"max_pixels": args.max_pixels, "max_declared_pixels": args.max_declared_pixels}
    for name, data in good:
        picture, x = load_picture(data, backend.pre, **caps)
        p = backend.probs(x[None])[0]
        order = np.argsort(-p, kind="stable")[:5]
        expect[name] = ([backend.classes[i] for i in order], p[order], tuple(picture.shape[:0:-1]))
    cost = None
    if backend.explains and args.cost_reps > 0:
        cost = heat_map_cost(backend, load_image(good[0][1], backend.pre), args.cost_reps)
    bad = bad_requests(args.max_bytes, args.max_pixels, good[0][1])
    kinds = [k for k, n in MIX.items() for _ in range(n)]
    np.random.default_rng(0).shuffle(kinds)
    del backend

    port = free_port()
    log = tmp / "serve.log"
    proc = start_server(args, model, port, log)
    idle_kib = rss_kib(proc.pid)
    bound_mb, how = args.max_rss_mb, "--max-rss-mb"
    if bound_mb is None:  # what each of --concurrency slots may hold at once, on top of the idle server
        slot_mb = (args.max_bytes + 4 * args.max_pixels) / 2**20 + SLACK_MB
        bound_mb = idle_kib / 1024 + args.concurrency * slot_mb
        how = f"idle + concurrency x (max bytes + 4 B x max pixels + {SLACK_MB} MB) = {slot_mb:.0f} MB a slot"
    results: list[tuple[str, int | str, float, bool]] = []  # kind, status, seconds, answer right
    lock, done, done_good, stop = threading.Lock(), [0], [0], threading.Event()

    def client(c: int) -> None:
        while not stop.is_set():
            with lock:  # every kind in each run of len(kinds) requests; the good ones in turn
                if done[0] >= args.requests:
                    return
                kind = kinds[done[0] % len(kinds)]
                done[0] += 1
                if kind == "good":
                    name, data = good[done_good[0] % len(good)]
                    kind = "explain" if every and done_good[0] % every == every - 1 else "good"
                    done_good[0] += 1
            if kind in ("good", "explain"):
                body = multipart(data, name, "image/png" if name.endswith(".png") else "image/jpeg")
            else:
                body = multipart(*bad[kind])
            query = "top_k=5&explain=1" if kind == "explain" else "top_k=5"
            try:
                status, answer, dt = post(port, body, 300, query)
            except OSError as e:  # a reset: not an HTTP status at all
                status, answer, dt = f"error {type(e).__name__}", {}, 0.0
            right = status != 200 or kind not in ("good", "explain")
            right = right or answer_is_right(answer, name, kind == "explain", expect)
            with lock:
                results.append((kind, status, dt, right))

    slow_body = multipart(good[0][1][:4096], "slow.jpg", "image/jpeg")
    slow_out: list[tuple[int | str, float]] = []
    trickle = max(0.5, args.request_timeout / 4)

    def slow(c: int) -> None:
        while not stop.is_set():  # one trickling upload after another while the load lasts
            slow_out.append(slow_client(port, slow_body, trickle, cap=4 * args.request_timeout + 30))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
    threads += [threading.Thread(target=slow, args=(c,)) for c in range(args.slow)]
    t0 = time.perf_counter()
    try:
        for t in threads:
            t.start()
        deadline = t0 + args.seconds
        for t in threads[: args.clients]:
            t.join(max(0.0, deadline - time.perf_counter()))
        stop.set()
        for t in threads:
            t.join(args.request_timeout * 4 + 300)
        wall = time.perf_counter() - t0
        alive = proc.poll() is None
        peak_kib = rss_kib(proc.pid, "VmHWM") if alive else 0
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
    for kind, status, _, _ in [*results, *(("slow", s, 0, True) for s, _ in slow_out)]:
        statuses[kind][status] += 1
    ok = ("good", "explain")
    lat = {k: sorted(dt for kind, status, dt, _ in results if kind == k and status == 200) for k in ok}
    wrong_answers = sum(1 for _, status, _, right in results if status == 200 and not right)
    unexpected = {k: {str(s): n for s, n in c.items() if s != EXPECTED[k]} for k, c in statuses.items()}
    unexpected = {k: v for k, v in unexpected.items() if v}
    fivexx = sum(n for c in statuses.values() for s, n in c.items() if isinstance(s, int) and s >= 500)

    def pct(k: str, q: float) -> float:
        return lat[k][min(len(lat[k]) - 1, int(q * len(lat[k])))] * 1000 if lat[k] else float("nan")

    answered = len(lat["good"]) + len(lat["explain"])
    figures = {
        "requests": len(results),
        "slow_clients": len(slow_out),
        "wall_s": wall,
        "requests_per_s": len(results) / wall,
        "good_per_s": answered / wall,
        "latency_ms": {k: {f"p{q}": pct(k, q / 100) for q in (50, 95, 99)} for k in ok},
        "explain_over_plain_p50": pct("explain", 0.5) / pct("good", 0.5),
        "heat_map_cost": cost,
        "statuses": {k: {str(s): n for s, n in c.items()} for k, c in sorted(statuses.items())},
        "wrong_answers": wrong_answers,
        "unexpected": unexpected,
        "5xx": fivexx,
        "server_alive": alive and health_ok,
        "rss_mb": {"idle": idle_kib / 1024, "peak": peak_kib / 1024, "bound": bound_mb, "bound_is": how},
        "largest_png": good[-1][0],
        "phones": [name for name, _ in photos],
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": str(model),
        "machine": f"{platform.node()} {os.cpu_count()} cpus, Python {platform.python_version()}",
    }
    print(json.dumps(figures, indent=1))
    if cost:
        print(f"\nheat map forward + gradient, in process, median of {cost['reps']}: traced split "
              f"{cost['split_ms']:.0f} ms, forward hook {cost['hook_ms']:.0f} ms (ratio "
              f"{cost['split_over_hook']:.3f}; a prediction {cost['predict_ms']:.0f} ms); beside the model: "
              f"split {cost['split_mb']:.1f} MB, model copy {cost['copy_mb']:.1f} MB; autograd keeps split "
              f"{cost['split_autograd_mb']:.1f} MB, hook {cost['hook_autograd_mb']:.1f} MB")  # fmt: skip
    print(f"{len(results)} requests + {len(slow_out)} slow clients in {wall:.1f} s: "
          f"{figures['requests_per_s']:.2f} req/s ({figures['good_per_s']:.2f} good/s); latency "
          + "; ".join(f"{k} p50/p95/p99 {pct(k, .5):.0f}/{pct(k, .95):.0f}/{pct(k, .99):.0f} ms" for k in ok)
          + f" (heat map / plain p50 {figures['explain_over_plain_p50']:.2f}); server RSS idle "
          f"{idle_kib / 1024:.0f} MB, peak {peak_kib / 1024:.0f} MB")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    problems = [msg for failed, msg in (
        (wrong_answers, f"{wrong_answers} good request(s) answered wrongly"),
        (unexpected, f"unexpected statuses {unexpected}"),
        (not figures["server_alive"], "the server died or stopped answering /health"),
        (peak_kib / 1024 > bound_mb, f"peak RSS {peak_kib / 1024:.0f} MB over {bound_mb:.0f} MB ({how})"),
        (not answered, "no good request was answered"),
    ) if failed]  # fmt: skip
    for p in problems:
        print(f"serve_load: FAIL: {p}", file=sys.stderr)
    if problems:
        print(f"server log (kept): {log}", file=sys.stderr)
        return 1
    shutil.rmtree(tmp)  # the server log and the default model.pt (~100 MB) go on success
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
