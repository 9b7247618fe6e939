"""Entry point for ``gunicorn api.wsgi:app``: the one place the web process reads its settings."""

from api.app import create_app
from worker.logs import configure_logging

configure_logging()
app = create_app()
