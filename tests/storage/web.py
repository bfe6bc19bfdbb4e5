"""``http_files``: a folder served over plain HTTP on 127.0.0.1 (the https:// store and https:// datasets)."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest


@pytest.fixture
def http_files(tmp_path: Path):
    """(folder, base URL): files written into the folder are served at base URL + '/' + name."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
