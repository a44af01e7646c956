# One image for both processes: `python -m consumer` and `python -m tracker.api`.
FROM python:3.11.10-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

# Dependencies first (cached layer), exactly as locked.
COPY Pipfile Pipfile.lock ./
RUN pip install 'pipenv==2026.10.3' \
 && pipenv requirements --exclude-markers | grep -v '^-e \.' > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && pip uninstall -y pipenv

COPY pyproject.toml ./
COPY tracker ./tracker
COPY consumer ./consumer
COPY swagger ./swagger
COPY migrations ./migrations
RUN pip install --no-deps -e . \
 && useradd --system --uid 10001 --home /app tracker

USER tracker
EXPOSE 8080 9090
CMD ["python", "-m", "tracker.api"]
