"""The pages for people: ``/docs`` (Swagger UI over ``/openapi.json``) and ``/ui/`` (the job dashboard).

Everything a page loads comes from this process: Swagger UI's files from the swagger-ui-bundle
package, ours from ``api/static/``. The pages are static and need no token to load; the
dashboard's script sends the bearer token the person typed (kept in the tab's sessionStorage) in
the Authorization header, never in a URL. A Content-Security-Policy holds every page to this
origin, so nothing a page does can reach another host.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, abort, redirect, send_from_directory
from swagger_ui_bundle import swagger_ui_path

pages = Blueprint("pages", __name__)

STATIC = Path(__file__).resolve().parent / "static"
#: The Swagger UI files /docs uses; nothing else of the bundle is served.
SWAGGER_FILES = frozenset({"swagger-ui.css", "swagger-ui-bundle.js"})
OWN_FILES = {"docs": frozenset({"index.html", "docs.js", "docs.css"}),
             "ui": frozenset({"index.html", "app.js", "style.css"})}
#: Swagger UI sets style attributes, hence 'unsafe-inline' for styles only; its schema icons are data: URIs.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")


@pages.after_request
def _headers(response):
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _own(folder: str, name: str):
    if name not in OWN_FILES[folder]:
        abort(404)
    response = send_from_directory(STATIC / folder, name, max_age=0)
    response.headers["Cache-Control"] = "no-cache"  # revalidate: a new release shows at once
    return response


@pages.get("/docs")
def docs():
    return _own("docs", "index.html")


@pages.get("/docs/<name>")
def docs_file(name: str):
    if name in SWAGGER_FILES:
        return send_from_directory(swagger_ui_path, name, max_age=3600)
    return _own("docs", name)


@pages.get("/")
def root():
    """A person typing the host gets the dashboard; relative, so it holds behind a path prefix too."""
    return redirect("ui/", code=302)


@pages.get("/ui")
def ui_redirect():
    return redirect("ui/", code=308)


@pages.get("/ui/")
def ui():
    return _own("ui", "index.html")


@pages.get("/ui/<name>")
def ui_file(name: str):
    return _own("ui", name)
