# The control plane's image: `corral up` (the chart in deploy/helm/corral runs it with
# --runtime kubernetes). Built from the repository's root:
#   docker build -t ghcr.io/corral/corral:0.1.0 .
FROM python:3.11-slim AS build
WORKDIR /src
COPY requirements/runtime.lock requirements/runtime.lock
RUN python -m venv /opt/corral \
 && /opt/corral/bin/pip install --no-cache-dir --require-hashes -r requirements/runtime.lock
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN /opt/corral/bin/pip install --no-cache-dir --no-deps .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="corral" \
      org.opencontainers.image.description="Corral's control plane" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.ref.name="ghcr.io/corral/corral"
COPY --from=build /opt/corral /opt/corral
RUN useradd --uid 10001 --user-group --home-dir /var/lib/corral --create-home corral
ENV PATH=/opt/corral/bin:$PATH \
    CORRAL_DATA_DIR=/var/lib/corral \
    CORRAL_LOG_FORMAT=json \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8470
ENTRYPOINT ["corral"]
CMD ["up", "--host", "0.0.0.0"]
