# syntax=docker/dockerfile:1
# kubevents: one image for every subcommand (produce, worker, replay, topics, ...).
#   docker build -t kubevents .
#   docker run --rm kubevents version
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src

# Dependencies first (their layer is reused until the lock changes): exact versions, verified hashes.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

# Then kubevents itself, without resolving anything again.
COPY pyproject.toml ./
COPY app ./app
COPY agents ./agents
COPY tables ./tables
RUN pip install --no-deps . && rm -rf /src/build /src/*.egg-info

# A numeric non-root user, so that Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 kubevents \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/kubevents --create-home \
      --shell /usr/sbin/nologin kubevents \
 && mkdir -p /data \
 && chown 10001:10001 /data
USER 10001:10001
WORKDIR /home/kubevents

# Health/metrics of the producer (8080) and the core worker's HTTP API (6066).
EXPOSE 8080 6066
ENTRYPOINT ["kubevents"]
CMD ["--help"]
