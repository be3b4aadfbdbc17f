# warnsvc: a slim, non-root image. Build: docker build -t warnsvc .
# Run:   docker run -p 8080:8080 -v warnsvc-data:/app/data -v warnsvc-feeds:/app/feeds warnsvc
# Mount your own config over /app/config to change sources (see docs/configuration.md).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY src ./src
# warnsvc and its runtime dependencies, at the versions pinned in constraints.txt (scripts/lock)
RUN pip wheel --no-cache-dir --wheel-dir /wheels --constraint constraints.txt .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    WARNSVC_HOST=0.0.0.0 \
    WARNSVC_PORT=8080
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home warnsvc
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links /wheels warnsvc && rm -rf /wheels
COPY config ./config
RUN mkdir -p data feeds && chown -R warnsvc:warnsvc /app
USER warnsvc
VOLUME ["/app/config", "/app/data", "/app/feeds"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('WARNSVC_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["warnsvc"]
CMD ["run", "-c", "config/warnsvc.yaml"]
