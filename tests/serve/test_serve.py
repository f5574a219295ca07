"""`artclf serve` as a real server on a free loopback port: top-k against `artclf predict`,
every 4xx limit, both backends, the upload page in a real headless chromium, and the
``--concurrency`` limit seen from inside the server."""

from __future__ import annotations

import base64
import http.client
import io
import json
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from artclf.export import ExportConfig
from artclf.export import run as export
from artclf.inference import load_image
from artclf.serve import load_backend
from tests.conftest import CLASSES, REPO, run_cli
from tests.serve.servers import multipart, post, serve_cmd, serving
from tests.support import procs

MAX_BYTES = 200_000
MAX_PIXELS = 4_000_000


@pytest.fixture(scope="module")
def onnx_file(model_pt, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert export(ExportConfig(model=model_pt, out=out, format="onnx")) == 0
    return out


@pytest.fixture(scope="module")
def server(onnx_file, tmp_path_factory):
    def cmd(port: int) -> list[str]:
        return serve_cmd(onnx_file, port, "--max-bytes", str(MAX_BYTES), "--max-pixels", str(MAX_PIXELS))

    with serving(cmd, tmp_path_factory.mktemp("serve")) as (proc, url, health):
        yield url, health
    log = procs.output(proc)
    assert "serving" in log and f"{url}/" in log  # loopback by default


def test_health(server):
    _, health = server
    card = health.pop("card")
    assert health == {
        "status": "ok",
        "backend": "onnxruntime",
        "model": "model.onnx",
        "classes": len(CLASSES),
        "image_size": 48,
        "explain": False,
        "open_set_threshold": None,  # the tiny model.pt was saved without one
    }
    assert card["arch"] == "resnet18" and card["test"] is None and card["temperature"] == 1.0


def test_predict_a_jpeg_matches_artclf_predict(server, images, model_pt):
    url, _ = server
    jpeg = images / "upright.jpg"
    status, answer = post(url, *multipart(jpeg.read_bytes(), "upright.jpg", "image/jpeg"))
    assert status == 200, answer
    top = answer["top_k"]
    probs = [t["probability"] for t in top]
    assert len(top) == 5 and probs == sorted(probs, reverse=True)
    assert all(0 <= p <= 1 for p in probs) and sum(probs) <= 1 + 1e-6
    # the reference: `artclf predict` (PyTorch, the same transform) on the same file
    res = run_cli("predict", "--model", model_pt, jpeg, "--format", "json", "--top-k", "5")
    assert res.returncode == 0, res.stderr
    ref = json.loads(res.stdout)[0]["top_k"]
    assert [t["artist"] for t in top] == [t["artist"] for t in ref]
    np.testing.assert_allclose(probs, [t["probability"] for t in ref], atol=1e-5)

    status, answer = post(url, *multipart(jpeg.read_bytes(), "a.jpg", "image/jpeg"), path="/predict?top_k=3")
    assert status == 200 and len(answer["top_k"]) == 3
    status, answer = post(url, *multipart(jpeg.read_bytes(), "a.jpg", "image/jpeg"), path="/predict?top_k=0")
    assert status == 400 and "top_k" in answer["detail"]


def test_oversize_body_is_413_by_length_and_while_streaming(server):
    url, _ = server
    big = np.random.default_rng(0).integers(0, 256, MAX_BYTES + 1, dtype=np.uint8).tobytes()
    status, answer = post(url, *multipart(big, "big.jpg", "image/jpeg"))
    assert status == 413 and str(MAX_BYTES) in answer["detail"]

    # no Content-Length: chunked transfer, counted as it arrives
    body, ctype = multipart(big, "big.jpg", "image/jpeg")
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=60)
    chunks = (body[i : i + 16384] for i in range(0, len(body), 16384))
    conn.request("POST", "/predict", body=chunks, headers={"Content-Type": ctype}, encode_chunked=True)
    r = conn.getresponse()
    assert r.status == 413 and str(MAX_BYTES) in json.loads(r.read())["detail"]
    conn.close()


def png_header(width: int, height: int) -> bytes:
    """A PNG that only declares its size (no pixel data): what a decompression bomb shows first."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunks = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def test_decompression_bomb_is_413_before_decoding(server):
    url, _ = server
    buf = io.BytesIO()
    Image.new("RGB", (2500, 2000), "white").save(buf, "PNG")  # 5 MP in a few kB: over --max-pixels
    assert len(buf.getvalue()) < MAX_BYTES
    status, answer = post(url, *multipart(buf.getvalue(), "bomb.png", "image/png"))
    assert status == 413 and "5000000 pixels" in answer["detail"]
    # 200 MP: over Pillow's own limit too, which refuses it already in Image.open
    assert 2 * Image.MAX_IMAGE_PIXELS < 20000 * 10000
    status, answer = post(url, *multipart(png_header(20000, 10000), "huge.png", "image/png"))
    assert status == 413 and "image too large" in answer["detail"]


def test_not_an_image_is_415_or_400(server):
    url, _ = server
    status, answer = post(url, *multipart(b"hello", "notes.txt", "text/plain"))
    assert status == 415 and "text/plain" in answer["detail"]
    status, answer = post(url, *multipart(b"\xff\xd8\xff\xe0 not a JPEG", "fake.jpg", "image/jpeg"))
    assert status == 400 and "not a readable image" in answer["detail"]
    ico = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(ico, "ICO")  # an image Pillow reads, in a format not served
    status, answer = post(url, *multipart(ico.getvalue(), "icon.ico", "image/x-icon"))
    assert status == 400 and "served format (JPEG, PNG, WEBP, BMP, TIFF, GIF)" in answer["detail"]
    status, answer = post(url, b'{"file": "x"}', "application/json")
    assert status == 415 and "multipart/form-data" in answer["detail"]
    status, answer = post(url, *multipart(b"abc", "a.jpg", "image/jpeg", field="image"))
    assert status == 400 and "'file'" in answer["detail"]
    status, answer = post(url, b"--x--\r\n", "multipart/form-data")  # no boundary
    assert status == 400 and "multipart" in answer["detail"]
    one, ctype = multipart(b"abc", "a.jpg", "image/jpeg")
    end = f"--{ctype.split('boundary=')[1]}--\r\n".encode()
    part = one.removesuffix(end)
    status, answer = post(url, part + part + end, ctype)  # two files
    assert status == 400 and "unreadable multipart" in answer["detail"]
    status, answer = post(url, *multipart(b"abc", "a.jpg", "image/jpeg"), path="/predict?top_k=many")
    assert status == 422  # FastAPI's validation of the query parameter


def test_an_exception_in_inference_is_a_json_500_and_one_log_line(onnx_file, images, tmp_path):
    """A model file whose metadata promises 56 px to a graph fixed at 48: ONNX Runtime raises
    inside the request; the client still gets an answer, and the server serves on."""
    import onnx

    graph = onnx.load(onnx_file)
    (prop,) = [p for p in graph.metadata_props if p.key == "artclf"]
    meta = json.loads(prop.value)
    meta["preprocess"].update(image_size=56, resize=64)
    prop.value = json.dumps(meta)
    bad = tmp_path / "mismatched.onnx"
    onnx.save(graph, bad)
    with serving(lambda port: serve_cmd(bad, port), tmp_path) as (proc, url, health):
        assert health["image_size"] == 56
        body = multipart((images / "upright.jpg").read_bytes(), "a.jpg", "image/jpeg")
        status, answer = post(url, *body)  # a dropped connection would raise here
        assert status == 500 and answer["detail"].startswith("internal error: ")
        assert "INVALID_ARGUMENT" in answer["detail"] and "image" in answer["detail"]
        assert post(url, *multipart(b"abc", "a.txt", "text/plain"))[0] == 415  # still serving
        log = procs.output(proc)
    said = [line for line in log.splitlines() if "internal error" in line]
    assert len(said) == 1 and said[0].startswith("artclf serve: POST /predict: 500 internal error: ")
    assert "Traceback" not in log and "Exception in ASGI application" not in log


def test_pytorch_and_onnx_backends_agree(onnx_file, model_pt, images):
    onnx, torch_ = load_backend(onnx_file), load_backend(model_pt)
    assert (onnx.name, torch_.name) == ("onnxruntime", "pytorch")
    assert onnx.classes == torch_.classes == CLASSES and onnx.pre == torch_.pre
    x = load_image(images / "cmyk.jpg", onnx.pre)[None]
    np.testing.assert_allclose(onnx.probs(x), torch_.probs(x), atol=1e-5)


def test_missing_model_is_a_clear_error(tmp_path):
    res = run_cli("serve", "--model", tmp_path / "nope.onnx")
    assert res.returncode == 1 and "nope.onnx: no such model file" in res.stderr


def test_upload_page_in_headless_chromium(server, chromium, images, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = server
    jpeg = images / "exif_rotated.jpg"
    chromium.get(url + "/")
    assert "Who painted it?" in chromium.find_element(By.TAG_NAME, "h1").text
    WebDriverWait(chromium, 30).until(lambda d: d.find_element(By.ID, "card").text.startswith("Model: "))
    chromium.find_element(By.ID, "file").send_keys(str(jpeg))
    chromium.find_element(By.ID, "submit").click()
    WebDriverWait(chromium, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .row")) == 5)
    WebDriverWait(chromium, 10).until(ec.text_to_be_present_in_element((By.ID, "status"), "done"))
    rows = chromium.find_elements(By.CSS_SELECTOR, "#results .row")
    shown = [tuple(r.find_element(By.CLASS_NAME, c).text for c in ("artist", "pct")) for r in rows]
    widths = [r.find_element(By.CLASS_NAME, "bar").value_of_css_property("width") for r in rows]
    chromium.save_screenshot(str(tmp_path / "page.png"))
    # what the API answers for the same file, as the page shows it
    status, answer = post(url, *multipart(jpeg.read_bytes(), jpeg.name, "image/jpeg"))
    assert status == 200
    assert shown == [(t["artist"], f"{100 * t['probability']:.1f}%") for t in answer["top_k"]]
    px = [float(w.removesuffix("px")) for w in widths]
    assert px == sorted(px, reverse=True) and px[0] > 0  # bars drawn, longest first
    assert chromium.find_element(By.ID, "error").text == ""

    # a file the server refuses: the page shows the server's reason, and no bars
    chromium.find_element(By.ID, "file").send_keys(str(images / "broken.jpg"))
    chromium.find_element(By.ID, "submit").click()
    WebDriverWait(chromium, 30).until(lambda d: d.find_element(By.ID, "error").text)
    assert "not a readable image" in chromium.find_element(By.ID, "error").text
    assert chromium.find_elements(By.CSS_SELECTOR, "#results .row") == []
    # an ONNX Runtime server offers no heat map and says so; its card says it was never evaluated
    assert not chromium.find_element(By.ID, "explain").is_enabled()
    assert "need the PyTorch backend" in chromium.find_element(By.ID, "explain-note").text
    assert "not evaluated on a test split" in chromium.find_element(By.ID, "card").text


# `artclf serve` with its decode and inference wrapped by a probe that prints how many of them
# are in flight (the limiter holds both). An inference waits, inside its limiter slot, until
# REQUESTS inferences are in flight or RENDEZVOUS_S passed: without a limit, all meet; with one,
# none does. (Counting decodes too let a late request's decode release the waiters early.)
PROBE = """
import sys, threading
from artclf.serve import app as serve  # the module whose names the app calls

want, rendezvous_s = int(sys.argv[1]), float(sys.argv[2])
cond, inside, meeting = threading.Condition(), 0, 0

def probed(fn, what, meet):
    def call(*args, **kwargs):
        global inside, meeting
        with cond:
            inside += 1
            meeting += meet
            print(f"probe: {what} starts, {inside} in flight", flush=True)
            cond.notify_all()
            if meet:  # until `want` inferences are inside at once (a decode does not count)
                cond.wait_for(lambda: meeting >= want, timeout=rendezvous_s)
        try:
            return fn(*args, **kwargs)
        finally:
            with cond:
                inside -= 1
                meeting -= meet
    return call

serve.load_picture = probed(serve.load_picture, "decode", meet=False)
serve.OnnxBackend.probs = probed(serve.OnnxBackend.probs, "inference", meet=True)
sys.exit(serve.main(sys.argv[3:]))
"""
REQUESTS = 3
# Long enough for REQUESTS requests sent together (threads behind a barrier) to reach the
# server (milliseconds here); a limited server waits it out once per request.
RENDEZVOUS_S = 1.5


def in_flight(log: str, what: str) -> list[int]:
    return [int(n) for n in re.findall(rf"probe: {what} starts, (\d+) in flight", log)]


def test_concurrency_limits_decodes_and_inferences_in_flight(onnx_file, images, tmp_path):
    jpeg = (images / "upright.jpg").read_bytes()

    def cmd(limit: int) -> Callable[[int], list[str]]:
        probe = [sys.executable, "-c", PROBE, str(REQUESTS), str(RENDEZVOUS_S)]
        return lambda port: [*probe, "--model", str(onnx_file), "--port", str(port),
                             "--concurrency", str(limit)]  # fmt: skip

    (tmp_path / "one").mkdir()
    (tmp_path / "all").mkdir()
    with (
        serving(cmd(1), tmp_path / "one") as (one, one_url, _),
        serving(cmd(REQUESTS), tmp_path / "all") as (unlimited, all_url, _),
    ):
        urls = [one_url] * REQUESTS + [all_url] * REQUESTS
        barrier = threading.Barrier(len(urls))

        def ask(url: str) -> tuple[int, dict]:
            barrier.wait()
            return post(url, *multipart(jpeg, "upright.jpg", "image/jpeg"))

        with ThreadPoolExecutor(len(urls)) as pool:
            answers = list(pool.map(ask, urls))
        logs = {"one": procs.output(one), "all": procs.output(unlimited)}
    assert [status for status, _ in answers] == [200] * len(urls), answers
    assert len({json.dumps(a["top_k"]) for _, a in answers}) == 1  # the same picture, the same answer
    for log in logs.values():
        assert len(in_flight(log, "decode")) == len(in_flight(log, "inference")) == REQUESTS, log
    # --concurrency 1: never more than one decode or inference at a time, whatever the timing
    assert max(in_flight(logs["one"], "decode") + in_flight(logs["one"], "inference")) == 1, logs["one"]
    # the probe does see overlap: with room for all, all inferences met
    assert max(in_flight(logs["all"], "inference")) == REQUESTS, logs["all"]


def test_a_port_taken_before_the_server_binds_it_is_retried(onnx_file, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        first = taken.getsockname()[1]
        ports = iter([first, procs.free_port()])
        with serving(lambda port: serve_cmd(onnx_file, port), tmp_path, ports) as (proc, url, health):
            assert url != f"http://127.0.0.1:{first}" and health["status"] == "ok"
            assert proc.poll() is None
    assert "address already in use" in (tmp_path / "serve-0.log").read_text()
    assert f"Uvicorn running on {url}" in (tmp_path / "serve-1.log").read_text()


def test_a_busy_port_is_one_clear_error_and_no_serving_line(onnx_file):
    """serve binds before it announces: nothing says "serving" on a port it could not take."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = run_cli("serve", "--model", onnx_file, "--port", str(port), timeout=120)
    assert res.returncode == 1 and "serving" not in res.stdout + res.stderr, res.stdout + res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith(f"artclf serve: error: cannot listen on 127.0.0.1:{port}: address already in use")
    assert "--port" in line


NAMES = ["Albrecht Dürer", "Claude Monet", "Edgar Degas", "Pablo Picasso", "Paul Klee", "Titian"]
CREATED = "2026-11-30T12:00:00+00:00"
TEST_SCORES = {"split": "test", "n": 40, "accuracy": 0.5, "macro_f1": 0.4, "ece": 0.05, "calibration": {},
               "open_set": {"auroc": 0.9}, "model_created": CREATED}  # fmt: skip


@pytest.fixture(scope="module")
def trained_like(model_pt, images, tmp_path_factory):
    """model.pt as a trained one carries it: names, provenance (a generated sample set), an
    open-set threshold between the scores of two test images, evaluate's scores beside it.
    -> (model, image it knows, image it answers unknown for)."""
    from artclf.model import load_model, save_model

    net, blob = load_model(model_pt)
    backend = load_backend(model_pt)
    score = {n: float(backend.probs(load_image(images / n, backend.pre)[None]).max()) for n in
             ("upright.jpg", "cmyk.jpg", "exif_rotated.jpg", "sub/gray.jpg", "sub/alpha.png")}  # fmt: skip
    hi, lo = max(score, key=score.get), min(score, key=score.get)
    assert score[hi] > score[lo]
    folder = tmp_path_factory.mktemp("trained_like")
    extra = {
        "artists": NAMES,
        "open_set": {"score": "max_probability", "threshold": (score[hi] + score[lo]) / 2},
        "trained_on": {
            "shards": "s3://bucket/shards",
            "name": "work",
            "images": 123,
            "classes": 6,
            "generated_sample": True,
        },  # fmt: skip
        "created": CREATED,
        "calibration": {"temperature": 1.0},
    }
    save_model(folder / "model.pt", net, blob["classes"], backend.pre, blob["arch"], extra)
    (folder / "eval-test").mkdir()
    (folder / "eval-test" / "metrics.json").write_text(json.dumps(TEST_SCORES))
    return folder / "model.pt", images / hi, images / lo


@pytest.fixture(scope="module")
def torch_server(trained_like, tmp_path_factory):
    model = trained_like[0]
    with serving(lambda port: serve_cmd(model, port), tmp_path_factory.mktemp("serve_torch")) as (
        _,
        url,
        health,
    ):
        yield url, health


def test_health_card_names_unknown_and_heat_map_over_the_api(torch_server, trained_like, tmp_path):
    url, health = torch_server
    model, known, unknown = trained_like
    card = health["card"]
    assert health["backend"] == "pytorch" and health["explain"] is True
    assert card["trained_on"]["generated_sample"] is True and card["trained_on"]["images"] == 123
    assert card["test"] == {"split": "test", "n": 40, "accuracy": 0.5, "macro_f1": 0.4, "ece": 0.05,
                            "calibrated": True, "open_set_auroc": 0.9}  # fmt: skip
    status, a = post(url, *multipart(known.read_bytes(), known.name, "image/jpeg"), path="/predict?explain=1")
    assert status == 200 and a["known"] and a["answer"] == a["top_k"][0]["artist"] in NAMES
    assert [NAMES.index(t["artist"]) for t in a["top_k"]] == [CLASSES.index(t["class"]) for t in a["top_k"]]
    # the heat map is the one `artclf predict --explain` draws for the same file
    assert a["heatmap"].startswith("data:image/png;base64,")
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(a["heatmap"].split(",", 1)[1]))).convert("RGB"))
    res = run_cli("predict", "--model", model, known, "--explain", tmp_path, "--format", "json")
    assert res.returncode == 0, res.stderr
    drawn = np.asarray(Image.open(tmp_path / f"{known.stem}.gradcam.png").convert("RGB"))
    assert np.array_equal(shown, drawn)
    status, b = post(url, *multipart(unknown.read_bytes(), unknown.name, "image/jpeg"))
    assert status == 200 and not b["known"] and b["answer"] == "unknown" and b["class"] is None
    assert b["score"] < b["threshold"] == health["open_set_threshold"] and len(b["top_k"]) == 5
    assert "heatmap" not in b  # only when asked


def test_page_shows_the_card_the_heat_map_and_unknown(torch_server, trained_like, chromium):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = torch_server
    _, known, unknown = trained_like
    chromium.get(url + "/")
    WebDriverWait(chromium, 30).until(lambda d: d.find_element(By.ID, "card").text.startswith("Model: "))
    card = chromium.find_element(By.ID, "card").text
    assert "trained on 123 images of s3://bucket/shards on 2026-11-30" in card
    assert "macro F1 0.400, accuracy 0.500, ECE 0.050 (calibrated)" in card
    assert "generated sample data" in chromium.find_element(By.ID, "sample-warning").text
    assert (
        chromium.find_element(By.ID, "explain").is_enabled()
        and chromium.find_element(By.ID, "explain").is_selected()
    )
    assert chromium.find_element(By.ID, "explain-note").text == ""

    def upload(path: Path) -> dict:
        chromium.find_element(By.ID, "file").send_keys(str(path))
        chromium.find_element(By.ID, "submit").click()
        WebDriverWait(chromium, 60).until(lambda d: "done" in d.find_element(By.ID, "status").text)
        status, answer = post(url, *multipart(path.read_bytes(), path.name, "image/jpeg"))
        assert status == 200
        return answer

    a = upload(known)
    heat = chromium.find_element(By.ID, "heatmap")
    assert heat.is_displayed() and heat.get_attribute("src").startswith("data:image/png;base64,")
    # the PNG decoded in the browser: the whole 80 × 60 picture, its long side brought up to 512 px
    assert (heat.get_property("naturalWidth"), heat.get_property("naturalHeight")) == (512, 384)
    assert chromium.find_element(By.ID, "answer").text == f"{a['answer']} ({100 * a['score']:.1f}%)"
    names = [
        r.find_element(By.CLASS_NAME, "artist").text
        for r in chromium.find_elements(By.CSS_SELECTOR, "#results .row")
    ]
    assert names == [t["artist"] for t in a["top_k"]] and "_" not in "".join(names)

    b = upload(unknown)
    said = chromium.find_element(By.ID, "answer")
    assert said.get_attribute("class") == "unknown" and said.text.startswith("unknown: none of the artists")
    assert f"below {100 * b['threshold']:.1f}%" in said.text
    assert len(chromium.find_elements(By.CSS_SELECTOR, "#results .row")) == 5  # the closest, still shown


@pytest.fixture(scope="module")
def strict_server(onnx_file, tmp_path_factory):
    flags = ("--request-timeout", "2", "--max-connections", "3", "--keep-alive", "1")
    with serving(lambda port: serve_cmd(onnx_file, port, *flags), tmp_path_factory.mktemp("strict")) as (
        _,
        url,
        _h,
    ):
        yield url


def raw_exchange(url: str, data: bytes, wait: float = 15.0) -> tuple[bytes, float]:
    """Send ``data`` and nothing more; everything the server sends until it closes, and when."""
    host, port = url.removeprefix("http://").split(":")
    t0 = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        s.sendall(data)
        got = b""
        while chunk := s.recv(4096):
            got += chunk
    return got, time.monotonic() - t0


def test_slow_headers_and_slow_bodies_get_408_and_lose_the_connection(strict_server, images):
    # headers that never end (slowloris)
    got, took = raw_exchange(strict_server, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Ty")
    assert got.startswith(b"HTTP/1.1 408 ") and b"not received in time" in got and 1.5 < took < 10
    # a body that stops coming after its headers
    body, ctype = multipart((images / "upright.jpg").read_bytes(), "a.jpg", "image/jpeg")
    head = (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    got, took = raw_exchange(strict_server, head.encode() + body[:100])
    assert got.startswith(b"HTTP/1.1 408 ") and 1.5 < took < 10
    # the same request sent in full is answered, and an idle keep-alive connection is closed
    got, took = raw_exchange(strict_server, head.encode() + body)
    assert got.startswith(b"HTTP/1.1 200 ") and b'"top_k"' in got and took < 10


def test_connections_over_the_limit_get_503_until_the_idle_ones_are_cut(strict_server):
    host, port = strict_server.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port))) for _ in range(3)]
    try:
        time.sleep(0.3)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(strict_server + "/health", timeout=30)
        assert e.value.code == 503
        time.sleep(3)  # past --request-timeout: the server closed them
        assert all(s.recv(4096).startswith(b"HTTP/1.1 408 ") for s in idle)
        with urllib.request.urlopen(strict_server + "/health", timeout=30) as r:
            assert r.status == 200
    finally:
        for s in idle:
            s.close()


def test_short_load_test_no_5xx_right_answers_bounded_memory(model_pt, tmp_path):
    """bench/serve_load.py at a test's size: every kind of request, one good request in 3 asking for
    a heat map while the others predict on the same model, a phone photo among the good ones,
    trickling clients, a real server."""
    out = tmp_path / "load.json"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.serve_load",
            "--model",
            str(model_pt),
            "--clients",
            "3",
            "--requests",
            "45",
            "--slow",
            "2",
            "--paintings",
            "3",
            "--max-mp",
            "1",
            "--phones",
            "1",
            "--phone-mp",
            "12",
            "--max-pixels",
            str(MAX_PIXELS),
            "--max-bytes",
            str(2_000_000),
            "--request-timeout",
            "2",
            "--json",
            str(out),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    f = json.loads(out.read_text())
    assert f["requests"] == 45 and f["5xx"] == 0 and f["wrong_answers"] == 0 and f["server_alive"]
    assert f["statuses"]["good"] == {"200": 20} and f["statuses"]["explain"] == {"200": 10}
    # a phone photo declaring 3 × --max-pixels among them: decoded at reduced size, answered
    assert f["phones"] == ["phone_0_4000x3000.jpg"] and 3 * MAX_PIXELS <= 12_000_000
    assert f["heat_map_cost"]["split_mb"] == 0 < f["heat_map_cost"]["copy_mb"]  # no second model
    for kind, status in (("oversize", 413), ("bomb", 413), ("truncated", 400), ("not_image", 415),
                         ("wrong_format", 400)):  # fmt: skip
        assert f["statuses"][kind] == {str(status): 3}, kind
    assert set(f["statuses"]["slow"]) == {"408"} and f["slow_clients"] >= 2
    assert f["rss_mb"]["idle"] < f["rss_mb"]["peak"] <= f["rss_mb"]["bound"]
