# The router-jobs application image: workers (`routerctl worker`), the metrics exporter
# (`routerctl metrics serve`), the HTTP gateway (`routerctl serve`) and the demo's fake provider
# all run from it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . /app
RUN pip install ".[providers,vault,aws,gateway]" \
    && useradd --system --uid 10001 --home /app app \
    && mkdir -p /run/rj-metrics && chown app /run/rj-metrics

USER app
EXPOSE 8000 9464 9465
CMD ["routerctl", "--help"]
