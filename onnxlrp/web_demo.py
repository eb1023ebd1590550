"""The browser demo's server: the static page of examples/web on localhost, with a compiled model at /model.onnx."""
from __future__ import annotations

import errno
import functools
import http.server
import os
from pathlib import Path
from typing import Optional, Union

import onnx

from .errors import OnnxLrpError

ORT_WEB = Path("node_modules") / "onnxruntime-web" / "dist" / "ort.min.mjs"
MODEL_PATH = "/model.onnx"
INSTALL_HINT = "npm ci --prefix {folder} (or make js-install in the repository)"


def default_page_folder() -> Path:
    """examples/web of the repository this onnxlrp runs from (an editable install or a checkout)."""
    return Path(__file__).resolve().parent.parent / "examples" / "web"


def page_folder(folder: Optional[Union[str, Path]] = None) -> Path:
    """The page's folder, checked: it holds index.html and onnxruntime-web installed from npm beside it."""
    path = Path(folder) if folder is not None else default_page_folder()
    if not (path / "index.html").is_file():
        where = f"{path}" if folder is not None else f"{path} (onnxlrp is not run from a repository checkout)"
        raise OnnxLrpError(f"the web page is not in {where}: pass --page-dir with the examples/web folder of "
                           f"the onnxlrp repository")
    if not (path / ORT_WEB).is_file():
        raise OnnxLrpError(f"onnxruntime-web is not installed beside the page ({path / ORT_WEB} is missing): run "
                           + INSTALL_HINT.format(folder=path))
    return path


def compiled_model_bytes(model: onnx.ModelProto, composite: str, params: Optional[dict] = None,
                         output: Optional[str] = None) -> bytes:
    """The serialized compiled model: model itself if onnxlrp compiled it, else model compiled with composite."""
    from .compiler import compile as compile_model, compiled_metadata
    compiled = model if compiled_metadata(model) is not None else compile_model(
        model, composite, params=params, output=output)
    if compiled.ByteSize() >= 2**31:
        raise OnnxLrpError("the compiled model is over 2 GB: a browser cannot load it in one piece")
    return compiled.SerializeToString()


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files of the page folder, the model from memory, and the headers that let wasm use threads."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
                      ".onnx": "application/octet-stream", ".css": "text/css", ".html": "text/html"}

    def __init__(self, *args, model: bytes, name: str, **kwargs):
        self.model, self.model_name = model, name
        super().__init__(*args, **kwargs)

    def end_headers(self) -> None:
        # cross-origin isolation: SharedArrayBuffer, hence onnxruntime-web's multi-threaded wasm
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.split("?", 1)[0] == MODEL_PATH:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(self.model)))
            self.send_header("Content-Disposition", f'inline; filename="{self.model_name}"')
            self.end_headers()
            self.wfile.write(self.model)
            return
        super().do_GET()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
        """Quiet: the command prints the address once, not a line per request."""


def make_server(page: Path, model: bytes, port: int = 8000, host: str = "127.0.0.1",
                name: str = "model.onnx") -> http.server.HTTPServer:
    """A threading HTTP server for the page and the model, which the page shows as name (port 0: a free port)."""
    safe = "".join(c for c in name if c.isascii() and c.isprintable() and c not in '"\\') or "model.onnx"
    handler = functools.partial(_Handler, directory=os.fspath(page), model=model, name=safe)
    try:
        return http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise OnnxLrpError(f"port {port} on {host} is in use: pass another --port (0 picks a free one)") from None
        raise OnnxLrpError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None


def address(server: http.server.HTTPServer) -> str:
    """The page's URL."""
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/"
