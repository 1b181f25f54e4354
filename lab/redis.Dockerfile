# voiceos-switch lab: redis-server from Debian 12.
ARG BOOKWORM_BASE=voiceos-lab/bookworm-base:1
FROM ${BOOKWORM_BASE}
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
CMD ["redis-server", "--bind", "127.0.0.1"]
