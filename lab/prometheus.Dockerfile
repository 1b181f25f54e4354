# voiceos-switch lab: Prometheus from Debian 12, scraping the bridge's /metrics.
ARG BOOKWORM_BASE=voiceos-lab/bookworm-base:1
FROM ${BOOKWORM_BASE}
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY prometheus.yml /etc/voiceos/prometheus.yml
CMD ["prometheus", "--config.file=/etc/voiceos/prometheus.yml"]
