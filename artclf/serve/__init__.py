"""``artclf serve``: the prediction service (FastAPI on uvicorn, ``artclf[serve]``).

- ``app``: the stage (``ServeConfig``, ``main``), the backends (``load_backend``: ONNX Runtime,
  PyTorch) and the routes
- ``http_limits``: body size, slow clients, connection count, enforced below FastAPI; a JSON
  500 for an exception inside a route
- ``page.html``: the upload page at ``GET /``
"""

from artclf.serve.app import ServeConfig, load_backend, main

__all__ = ["ServeConfig", "load_backend", "main"]
