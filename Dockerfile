# Several agents in one container, one per person (README: Several people). Build from the
# top of the sources:
#   docker build -t mailagent .
# and run it with deploy/compose.yaml (PostgreSQL beside it), or alone:
#   docker run -d --restart=on-failure -v ./deploy/config:/config:ro -v mailagent-data:/data \
#     -e ANTHROPIC_API_KEY -e ALICE_IMAP_PASSWORD ... mailagent
# /config holds one folder per agent (/config/alice/mailagent.toml, its policies/ beside it);
# each config says data_dir = "/data/<name>".
FROM python:3.11-slim-bookworm AS wheel
WORKDIR /src
COPY . /src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels /src

FROM python:3.11-slim-bookworm
# bubblewrap: the sandbox of run_command; without it (or without user namespaces in the
# container) run_command is not offered, and `mailagent check` says why.
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap \
 && rm -rf /var/lib/apt/lists/*
COPY --from=wheel /wheels /wheels
# The postgres extra: psycopg, the driver of database_url = "postgresql+psycopg://..."
RUN pip install --no-cache-dir "$(ls /wheels/*.whl)[postgres]" && rm -rf /wheels

RUN useradd --create-home --uid 1000 mailagent \
 && mkdir /data && chown mailagent:mailagent /data
USER mailagent
WORKDIR /home/mailagent
VOLUME ["/data"]
STOPSIGNAL SIGTERM
# `docker run ... mailagent` runs every agent; `docker run ... mailagent check --configs /config`
# (or any other command) runs that instead.
ENTRYPOINT ["mailagent"]
CMD ["run", "--configs", "/config"]
