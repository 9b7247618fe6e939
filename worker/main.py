"""Entry point for ``celery -A worker.main worker``: the one place the worker reads its settings."""

from worker.celery_app import create_celery
from worker.settings import Settings

app = create_celery(Settings.from_env())
