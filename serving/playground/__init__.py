"""The REST port's playground page (`--rest_api_playground`): plain HTML, CSS and JS, no build step.

The page only uses the public API: it reads `/openapi.json` for the models and
their labels, TF Serving's status and metadata routes for versions and
signatures, `:classify` once for the class names, and `:predict` for each text;
it shows the curl command of every prediction it makes. Nothing is fetched from
outside the server (no CDN), so it works on a closed network.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from serving import routes

# Asset file → Content-Type. index.html is served at `/`, the others under /playground/.
_ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}
# The page runs only its own script and style sheet and talks only to this server.
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class Page:
    """One static file of the playground: its bytes and response headers."""

    body: bytes
    headers: dict[str, str]


def pages() -> dict[str, Page]:
    """The playground's files by URL path (`/`, `/playground/playground.js`, ...).

    Returns:
      URL path → `Page`, read once from the package data.

    Raises:
      FileNotFoundError: the package was installed without its data files
        (reinstall textserve; `serving/playground/*` is package data).
    """
    folder = resources.files(__name__)
    out = {}
    for name, content_type in _ASSETS.items():
        path = routes.PLAYGROUND_PATH if name == "index.html" else routes.PLAYGROUND_ASSET_PREFIX + name
        body = folder.joinpath(name).read_bytes()
        out[path] = Page(body, {"Content-Type": content_type, **_SECURITY_HEADERS})
    return out
