"""``artclf serve --model FILE``: the prediction service (FastAPI + uvicorn, ``artclf[serve]``).

``FILE`` is an ONNX model from ``artclf export`` (ONNX Runtime backend) or a ``model.pt`` from
``artclf train`` (PyTorch backend); either carries its class list and Preprocess, and uploads go
through :func:`artclf.inference.load_picture`, the transform evaluation and predict use (no
train/serve skew).

- ``POST /predict``: multipart form field ``file`` (an image) → ``{"answer", "known",
  "score", "threshold", "top_k": [{"artist", "class", "probability"}…], …}``: calibrated
  probabilities, artists as ``artists.csv`` names them with the stable class id beside, and
  ``"answer": "unknown"`` below the model's open-set threshold (the top k still listed).
  ``?top_k=N`` asks for another count; ``?explain=1`` adds a Grad-CAM heat map of the top class
  over the whole upload, the centre square the model saw outlined (``heatmap``, a PNG data URL,
  512 to 1024 px on its long side; PyTorch backend only; no hook on the shared model, so heat
  maps and plain predictions run side by side: :mod:`artclf.explain`).
- ``GET /health``: backend, model file, classes, input size, whether heat maps are offered,
  and the model card: what it was trained on, when, its test macro F1 and ECE from
  ``artclf evaluate`` (``RUN/eval-test/metrics.json`` beside ``model.pt``, or carried by the
  ONNX file from export).
- ``GET /``: a page to upload a painting and see the answer, the top 5 with bars, the heat map.

Limits, each a clear 4xx with a JSON ``detail``: a body over ``--max-bytes`` → 413 (checked on
``Content-Length`` and again while the body streams in); an image that would decode to more
than ``--max-pixels`` → 413 before it is decoded (a baseline JPEG counts at its reduced decode,
so phone photos pass; what decodes in full, at its header's size), and so is a JPEG whose header
declares more than ``--max-declared-pixels`` (decompression bombs); a request that is not
``multipart/form-data`` or a part whose declared type is not ``image/*`` → 415; no ``file``
field, or bytes that are not a JPEG, PNG, WebP, BMP, TIFF or GIF image → 400. A request whose
headers and body are not in within ``--request-timeout`` seconds gets 408 and its connection
is closed (slow clients cannot hold the server); more than ``--max-connections`` open
connections → 503. Decoding and inference hold memory: at most ``--concurrency`` at once, each
decoded at reduced size (never below the model's resize). Anything else that fails inside a
request is a 500 with a JSON ``detail`` (the exception's type and message) and one line on
stderr, never a dropped connection. It binds to 127.0.0.1 unless told otherwise, and has no
authentication: put it behind your gateway to expose it.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at run time, and
# Request is imported inside create_app (fastapi is an optional extra).
import base64
import errno
import html
import json
import logging
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from artclf.artists import display_names
from artclf.config import arg, stage_main
from artclf.errors import ArtclfError
from artclf.explain import GradCam, heat_map, png_bytes
from artclf.images import DECLARED_CEILING, TooManyPixels
from artclf.inference import answer, load_picture
from artclf.model import model_card, not_a_model_pt
from artclf.serve.http_limits import CLOSE, BodyLimit, BodyTooLarge, InternalErrors, timed_protocol
from artclf.transforms import Preprocess

BACKENDS = ("auto", "onnx", "torch")
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")  # Pillow's names; nothing else is even tried
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class ServeConfig:
    model: Path = field(metadata=arg("model.onnx (artclf export) or model.pt (artclf train)"))
    host: str = field(default="127.0.0.1", metadata=arg("address to bind (loopback by default)"))
    port: int = field(default=8000, metadata=arg("TCP port"))
    backend: str = field(default="auto", metadata=arg("onnx, torch, or auto (by the file's suffix)"))
    top_k: int = field(default=5, metadata=arg("artists returned per image unless ?top_k= says"))
    max_bytes: int = field(default=20 * 2**20, metadata=arg("largest request body accepted (bytes)"))
    max_pixels: int = field(
        default=25_000_000,
        metadata=arg(
            "most pixels an image may decode to, width × height: a baseline JPEG counts at its reduced "
            "decode (1/2 to 1/8 scale for the model's input: a 200 MP phone photo decodes to 3 MP), "
            "PNG, WebP, TIFF, BMP, GIF and progressive JPEG at full size (a 25 MP scan fits)"
        ),
    )
    max_declared_pixels: int = field(
        default=DECLARED_CEILING,
        metadata=arg(
            "most pixels a JPEG's header may declare, width × height: far above --max-pixels because "
            "a JPEG decodes reduced, yet a ceiling, because libjpeg still reads every block "
            "(phones write up to 200 MP; beyond 400 MP it is a decompression bomb)"
        ),
    )
    threads: int = field(default=0, metadata=arg("intra-op threads of the backend (0 = its default)"))
    concurrency: int = field(default=4, metadata=arg("images decoded and predicted at once (memory bound)"))
    max_connections: int = field(
        default=64, metadata=arg("open connections served at once; more get 503 (uvicorn's limit)")
    )
    request_timeout: float = field(
        default=60.0, metadata=arg("seconds for a request's headers and body to arrive; then 408, closed")
    )
    keep_alive: float = field(default=5.0, metadata=arg("seconds an idle keep-alive connection stays open"))

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        limits = (self.top_k, self.max_bytes, self.max_pixels, self.max_declared_pixels, self.concurrency,
                  self.max_connections)  # fmt: skip
        if min(limits) < 1 or not 0 <= self.port < 65536:
            raise ValueError(
                "--top-k, --max-bytes, --max-pixels, --max-declared-pixels, --concurrency and "
                "--max-connections must be >= 1 and --port in [0, 65535]"
            )
        if not (self.request_timeout > 0 and self.keep_alive > 0):
            raise ValueError("--request-timeout and --keep-alive must be > 0 seconds")


class Backend:
    """A loaded model: ``classes``, ``names`` (for people), ``pre``, ``open_set``, ``card``,
    and ``probs(uint8 N×3×S×S) -> calibrated float N×C``; ``explain`` where it can."""

    name: str
    classes: list[str]
    names: list[str]
    pre: Preprocess
    open_set: dict | None
    card: dict
    explains = False

    def probs(self, x: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def explain(self, picture: torch.Tensor) -> bytes:
        """PNG of the top class's Grad-CAM over the whole uint8 3×H×W ``picture`` as decoded, the
        model's crop outlined (:func:`artclf.explain.heat_map`, what ``predict --explain`` draws)."""
        raise NotImplementedError


class OnnxBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: Path, threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ArtclfError(
                "onnxruntime is not installed: pip install -e '.[serve]' in the artclf clone"
            ) from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ArtclfError(f"{path}: not a loadable ONNX model ({type(e).__name__}: {e})") from None
        meta = self.session.get_modelmeta().custom_metadata_map.get("artclf")
        if meta is None:
            raise ArtclfError(f"{path}: no 'artclf' metadata (class list); export it with `artclf export`")
        meta = json.loads(meta)
        self.classes, self.pre = meta["classes"], Preprocess.from_dict(meta["preprocess"])
        self.names = display_names(self.classes, meta.get("artists"))
        self.open_set, self.card = meta.get("open_set"), meta.get("card", {})

    def probs(self, x: torch.Tensor) -> np.ndarray:
        logits = self.session.run(None, {"image": x.numpy()})[0]  # calibrated: T is in the graph
        return torch.softmax(torch.from_numpy(logits).float(), dim=1).numpy()


class TorchBackend(Backend):
    name = "pytorch"

    def __init__(self, path: Path, threads: int) -> None:
        from artclf.model import load_model

        if threads:
            torch.set_num_threads(threads)
        self.model, blob = load_model(path)
        self.classes, self.pre = blob["classes"], Preprocess.from_dict(blob["preprocess"])
        self.names = display_names(self.classes, blob.get("artists"))
        self.open_set, self.card = blob.get("open_set"), model_card(path, blob)
        try:  # traced now, before any request runs the model (GradCam says why)
            self.grad_cam: GradCam | None = GradCam(self.model)
        except ArtclfError:
            self.grad_cam = None
        self.explains = self.grad_cam is not None

    def probs(self, x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(self.model(x).float(), dim=1).numpy()

    def explain(self, picture: torch.Tensor) -> bytes:
        im, _ = heat_map(self.grad_cam, picture, self.pre)  # no hook, no lock: predictions may run meanwhile
        return png_bytes(im)


def load_backend(path: Path, backend: str = "auto", threads: int = 0) -> Backend:
    if path.is_dir():  # a run or checkpoint folder: say which file in it to serve
        raise ArtclfError(f"{path}: {not_a_model_pt(path)}")
    if not path.is_file():
        raise ArtclfError(f"{path}: no such model file (artclf export … --out FILE, or RUN/model.pt)")
    if backend == "auto":
        backend = "onnx" if path.suffix.lower() == ".onnx" else "torch"
    return OnnxBackend(path, threads) if backend == "onnx" else TorchBackend(path, threads)


def create_app(backend: Backend, cfg: ServeConfig):
    """The FastAPI application (also usable with any ASGI server)."""
    try:
        import anyio
        from fastapi import FastAPI, HTTPException, Request
        from fastapi.responses import HTMLResponse
    except ImportError:
        raise ArtclfError("fastapi is not installed: pip install -e '.[serve]' in the artclf clone") from None

    app = FastAPI(title="artclf", description="Who painted it? Top-k artists of a painting.")
    app.add_middleware(InternalErrors)  # inside FastAPI's own (a plain-text 500 and a traceback)
    # decoding (up to --max-pixels) and inference hold memory: at most --concurrency at once
    limiter = anyio.CapacityLimiter(cfg.concurrency)
    page = (
        resources.files("artclf.serve")
        .joinpath("page.html")
        .read_text(encoding="utf-8")
        .replace("{{TITLE}}", html.escape(f"artclf · {cfg.model.name}"))
    )

    @app.get("/health")
    def health() -> dict:
        return {
            "status": "ok",
            "backend": backend.name,
            "model": cfg.model.name,
            "classes": len(backend.classes),
            "image_size": backend.pre.image_size,
            "explain": backend.explains,
            "open_set_threshold": backend.open_set["threshold"] if backend.open_set else None,
            "card": backend.card,
        }

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    caps = {"max_pixels": cfg.max_pixels, "max_declared_pixels": cfg.max_declared_pixels}

    def decode(upload, filename: str, explain: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Worker thread, inside a limiter slot: the upload's bytes (spooled by the form parser,
        read only now) to the picture (kept only for a heat map) and the model's input."""
        try:
            picture, x = load_picture(upload.file.read(), backend.pre, formats=FORMATS, **caps)
            return (picture if explain else None), x
        except TooManyPixels as e:
            raise HTTPException(413, f"{filename!r}: image too large: {e}") from None
        except Exception as e:  # any decoder error, a format not served
            detail = f"{filename!r} is not a readable image in a served format ({', '.join(FORMATS)}): "
            raise HTTPException(400, detail + type(e).__name__) from None

    @app.post("/predict")
    async def predict(request: Request, top_k: int | None = None, explain: bool = False) -> dict:
        k = cfg.top_k if top_k is None else top_k
        if not 1 <= k <= len(backend.classes):
            raise HTTPException(400, f"top_k must be in [1, {len(backend.classes)}], got {k}")
        if explain and not backend.explains:
            raise HTTPException(
                400, f"heat maps need the PyTorch backend (serve model.pt); this is {backend.name}"
            )
        ctype = request.headers.get("content-type", "")
        if ctype.split(";")[0].strip().lower() != "multipart/form-data":
            raise HTTPException(415, f"send multipart/form-data with an image in field 'file', not {ctype!r}")
        try:
            async with request.form(max_files=1, max_fields=8) as form:
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise HTTPException(400, "no file in form field 'file'")
                declared = (upload.content_type or "").lower()
                if not declared.startswith("image/"):
                    detail = f"{upload.filename!r} is {declared or 'untyped'}, not an image/* type"
                    raise HTTPException(415, detail)
                started = time.perf_counter()
                picture, x = await anyio.to_thread.run_sync(
                    decode, upload, upload.filename, explain, limiter=limiter
                )
                filename = upload.filename
        except BodyTooLarge as e:  # the body streamed past --max-bytes (no Content-Length)
            raise HTTPException(413, str(e), headers=CLOSE) from None
        except HTTPException:
            raise
        except Exception as e:  # malformed multipart, too many files or fields, client gone
            raise HTTPException(400, f"unreadable multipart body: {e}") from None
        p = (await anyio.to_thread.run_sync(backend.probs, x[None], limiter=limiter))[0]
        result = {
            "filename": filename,
            **answer(p, backend.classes, backend.names, k, backend.open_set),
            "backend": backend.name,
        }
        if explain:
            png = await anyio.to_thread.run_sync(backend.explain, picture, limiter=limiter)
            result["heatmap"] = "data:image/png;base64," + base64.b64encode(png).decode()
        result["ms"] = round(1000 * (time.perf_counter() - started), 1)
        return result

    return app


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main(ServeConfig, run, "artclf serve", __doc__, argv)


def run(cfg: ServeConfig) -> int:
    try:
        import uvicorn
    except ImportError:
        raise ArtclfError("uvicorn is not installed: pip install -e '.[serve]' in the artclf clone") from None
    backend = load_backend(cfg.model, cfg.backend, cfg.threads)
    app = BodyLimit(create_app(backend, cfg), cfg.max_bytes)
    config = uvicorn.Config(
        app,
        log_level="info",
        access_log=True,
        http=timed_protocol(cfg.request_timeout),
        limit_concurrency=cfg.max_connections,
        timeout_keep_alive=cfg.keep_alive,
    )  # its logging is set up here, before the lines below
    sock = listen(cfg.host, cfg.port)  # before anything says "serving"
    if cfg.host not in LOOPBACK:
        print(
            f"artclf serve: warning: listening on {cfg.host}: other machines can reach it; no authentication",
            file=sys.stderr,
        )
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    url = f"http://{host}:{sock.getsockname()[1]}"  # --port 0: the port the system chose
    print(
        f"serving {cfg.model} ({backend.name}, {len(backend.classes)} artists, {backend.pre.image_size} px) "
        f"at {url}/",
        flush=True,
    )
    # uvicorn logs this itself only for a socket it bound; scripts wait for it (as with its workers)
    logging.getLogger("uvicorn.error").info("Uvicorn running on %s (Press CTRL+C to quit)", url)
    with sock:
        uvicorn.Server(config).run(sockets=[sock])
    return 0


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, as uvicorn makes one; a port that is taken is an
    error naming it. Connections that arrive before the server loop starts wait in the backlog."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # uvicorn's default backlog
    except OSError as e:
        sock.close()
        why = (e.strerror or str(e)).lower()
        fix = "pass another --host or --port"
        if e.errno == errno.EADDRINUSE:
            fix = "another server holds the port: stop it or pass another --port"
        raise ArtclfError(f"cannot listen on {host}:{port}: {why}; {fix}") from None
    return sock
