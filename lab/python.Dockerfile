# voiceos-switch lab: the Python services (bridge, worker, dashboard, and
# llama.cpp's OpenAI-compatible server with the embedded SmolLM2), on Debian 12
# (python3 3.11) from the wheelhouse `voiceos-switch lab build` makes in
# build/lab/ (voiceos_switch/lab/images.py): the runtime packages of the
# project's .venv, pinned to the versions installed there.
ARG BOOKWORM_BASE=voiceos-lab/bookworm-base:1

FROM ${BOOKWORM_BASE} AS runtime
# libgomp1: llama.cpp's threads (OpenMP)
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      python3 python3-venv libgomp1 \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/voiceos/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    VOICEOS_STATE_DIR=/opt/voiceos/state \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

FROM runtime AS install
RUN python3 -m venv /opt/voiceos/venv
COPY build/lab/wheels/ /tmp/wheels/
# the wheelhouse first; a package missing from it comes from PyPI
RUN pip install -q --no-cache-dir --no-deps --no-index --find-links /tmp/wheels \
      -r /tmp/wheels/requirements.txt \
 || pip install -q --no-cache-dir --no-deps --find-links /tmp/wheels \
      -r /tmp/wheels/requirements.txt
# the dashboard's browser phone: SIP.js as `npm ci` installed it (scripts/setup)
COPY voiceos_switch/dashboard/phone/node_modules/sip.js/lib/ /tmp/sipjs/
COPY build/lab/project/ /tmp/project/
RUN pip install -q --no-cache-dir --no-deps --no-index /tmp/project/*.whl \
 && python -c "import voiceos_switch, llama_cpp, llama_cpp.server.app, piper, faster_whisper, onnxruntime" \
 && ln -s "$(python -c 'from voiceos_switch.providers.llm import default_gguf; print(default_gguf())')" \
      /opt/voiceos/smollm2.gguf \
 && phone="$(python -c 'import voiceos_switch.dashboard as d, pathlib; print(pathlib.Path(d.__file__).parent / "phone")')" \
 && mkdir -p "$phone/node_modules/sip.js" && cp -r /tmp/sipjs "$phone/node_modules/sip.js/lib" \
 && python -m voiceos_switch.providers.moonshine

FROM runtime
COPY --from=install /opt/voiceos /opt/voiceos
WORKDIR /data
CMD ["voiceos-switch", "--help"]
