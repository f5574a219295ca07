"""`artclf serve` with its default limits, real uploads: phone photos (49 and 200 MP JPEGs) are
answered, decoded at reduced size and with bounded memory; what decodes in full (a PNG, a
progressive JPEG) is refused at 25 MP; a JPEG header beyond 400 MP is refused unread."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.serve.servers import multipart, post, serve_cmd, serving
from tests.support.jpeg import flat_jpeg

SIDE = 7000  # 49 MP: a 48 MP phone camera's photo
GROWTH_MB = 400  # 4 full RGB decodes of 49 MP would take 4 × 147 MB


@pytest.fixture(scope="module")
def phone_photos() -> dict[str, bytes]:
    """A 7000 × 7000 photo as a phone encodes it (baseline, 4:2:0) and as a progressive JPEG:
    smooth colour with a little noise, low quality, about 1 MB each."""
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (70, 70, 3), dtype=np.uint8)).resize(
        (SIDE, SIDE), Image.BILINEAR
    )
    out = {}
    for name, progressive in (("baseline", False), ("progressive", True)):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=30, progressive=progressive)
        out[name] = buf.getvalue()
    return out


@pytest.fixture(scope="module")
def default_server(model_pt, tmp_path_factory):
    with serving(lambda port: serve_cmd(model_pt, port), tmp_path_factory.mktemp("serve_caps")) as (
        proc,
        url,
        _,
    ):
        yield proc, url


def status_kib(pid: int, field: str) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def test_four_phone_photos_at_once_are_answered_with_bounded_memory(default_server, phone_photos):
    proc, url = default_server
    idle_kib = status_kib(proc.pid, "VmRSS")
    body = multipart(phone_photos["baseline"], "museum.jpg", "image/jpeg")
    barrier = threading.Barrier(4)

    def ask(_: int) -> tuple[int, dict]:
        barrier.wait()
        return post(url, *body)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, range(4)))
    assert [s for s, _ in answers] == [200] * 4, [a.get("detail") for _, a in answers]
    assert all(len(a["top_k"]) == 5 and a["filename"] == "museum.jpg" for _, a in answers)
    growth_mb = (status_kib(proc.pid, "VmHWM") - idle_kib) / 1024
    assert growth_mb <= GROWTH_MB, f"server RSS grew {growth_mb:.0f} MB for 4 phone photos"


def test_a_200_mp_jpeg_is_answered(default_server):
    _, url = default_server
    data = flat_jpeg(20000, 10000)  # 200 MP: over Pillow's own bomb limit (179 MP) too
    status, answer = post(url, *multipart(data, "200mp.jpg", "image/jpeg"))
    assert status == 200, answer
    assert len(answer["top_k"]) == 5


def test_what_decodes_in_full_keeps_the_25_mp_cap(default_server, phone_photos):
    _, url = default_server
    png = io.BytesIO()
    Image.new("L", (SIDE, SIDE)).save(png, "PNG")  # 49 MP in 50 kB
    status, answer = post(url, *multipart(png.getvalue(), "scan.png", "image/png"))
    assert status == 413, answer
    assert "7000×7000 = 49000000 pixels" in answer["detail"] and "25000000" in answer["detail"]
    assert "--max-pixels" in answer["detail"]
    status, answer = post(url, *multipart(phone_photos["progressive"], "prog.jpg", "image/jpeg"))
    assert status == 413 and "progressive JPEG" in answer["detail"] and "25000000" in answer["detail"]


def test_a_jpeg_header_beyond_the_ceiling_is_413_unread(default_server):
    _, url = default_server
    head = flat_jpeg(25000, 20000, scan=False)  # 500 MP declared, no pixel data at all
    status, answer = post(url, *multipart(head, "bomb.jpg", "image/jpeg"))
    assert status == 413, answer
    assert "declares" in answer["detail"] and "400000000" in answer["detail"]
    assert "--max-declared-pixels" in answer["detail"]
