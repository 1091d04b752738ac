"""The web UI: static files shipped as package data, served by the app itself (no CDN).

Every UI response carries a strict Content-Security-Policy: scripts, styles, fetches and images from
this origin only, no inline script, no framing. The files hold no secret and no data, so they are
served without a key even when the server requires one; the page asks for the key and sends it as a
Bearer token on every API call, which is where access is decided.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response

STATIC = Path(__file__).parent / "static"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".txt": "text/plain; charset=utf-8", ".md": "text/plain; charset=utf-8"}


def _assets() -> dict[str, Path]:
    """URL path -> file, fixed at import: only files that exist in the package are ever served."""
    files = {f"/ui/{p.relative_to(STATIC).as_posix()}": p for p in STATIC.rglob("*") if p.is_file()}
    return {"/": STATIC / "index.html", **files}


ASSETS = _assets()
PATHS = frozenset(ASSETS)  # opened to requests without a key (serve/api/auth.py)


def install(app: FastAPI) -> None:
    for url, path in ASSETS.items():
        app.get(url, include_in_schema=False)(_handler(path))


def _handler(path: Path):  # noqa: ANN202 - a FastAPI endpoint
    media = _TYPES.get(path.suffix, "application/octet-stream")

    async def serve_file() -> Response:
        return FileResponse(path, media_type=media, headers=_HEADERS)

    return serve_file
