"""Running the admin: migrate, bootstrap, then serve the API with uvicorn (uvloop, httptools)."""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn

from .api import create_app
from .service import Admin

# Longer than clients keep an idle connection (httpx, so the SDK and the CLI: 5 s, as long
# as uvicorn's default): otherwise the admin may close one just as a client sends on it,
# and that request fails with a connection reset.
KEEP_ALIVE = 75.0


def serve(store: str | None, data_dir: Path, listen: str) -> int:
    host, _, port = listen.rpartition(":")
    try:
        admin = Admin(store, data_dir)
        admin.start()
    except Exception as error:  # the store is unreachable or unusable: say which and stop
        print(f"edgeplane admin: cannot open the store: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    print(f"edgeplane admin: serving http://{host or '0.0.0.0'}:{port}/api/v1  (docs: /docs, OpenAPI: /openapi.json)"
          f"  store: {admin.store.engine.url.render_as_string(hide_password=True)}", file=sys.stderr, flush=True)
    uvicorn.run(create_app(admin), host=host or "0.0.0.0", port=int(port), loop="uvloop", http="httptools",
                log_level="warning", timeout_graceful_shutdown=5, timeout_keep_alive=KEEP_ALIVE)
    admin.close()
    return 0
