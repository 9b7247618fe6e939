# One image for the api, worker, flower and simulator processes; compose picks the command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md Procfile ./
COPY api api
COPY cli cli
COPY worker worker
COPY simulator simulator
RUN pip install --no-cache-dir .
ENV PYTHONUNBUFFERED=1
