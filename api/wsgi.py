"""Entry point for ``gunicorn api.wsgi:app``: the one place the web process reads its settings."""

from api.app import create_app

app = create_app()
