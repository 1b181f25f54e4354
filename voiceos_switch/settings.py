"""All configuration in one place: environment variables with the VOICEOS_ prefix."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_state_dir() -> Path:
    import os

    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "voiceos-switch"


def split_hostport(value: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` and a bare ``PORT`` too)."""
    text = value.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif text.isdigit():
        host, port = default_host, text
    else:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if not port.isdigit() or not 0 <= int(port) < 65536:  # 0: any free port
        raise ValueError(f"bad port in {value!r}")
    return host or default_host, int(port)


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOICEOS_", env_file=None, extra="ignore")

    # Bridge ---------------------------------------------------------------
    audiosocket: str = Field(
        "127.0.0.1:9092", description="Address the AudioSocket server listens on."
    )
    allow_remote_audiosocket: bool = Field(
        False,
        description="Permit a non-loopback AudioSocket listener. AudioSocket has no "
        "authentication: only enable this on a network you control and firewall it "
        "to the PBX.",
    )
    metrics: str | None = Field(
        None,
        description="Serve Prometheus metrics at http://HOST:PORT/metrics (off when unset; "
        "e.g. 127.0.0.1:9100).",
    )
    metrics_token: SecretStr | None = Field(
        None,
        description="Bearer token the metrics endpoint asks for; required when it listens "
        "beyond loopback.",
    )
    dashboard: str | None = Field(
        None,
        description="The bridge serves the live dashboard of its own calls at "
        "http://HOST:PORT/ (off when unset; e.g. 127.0.0.1:8089). `voiceos-switch "
        "dashboard` serves every bridge's calls instead.",
    )
    dashboard_token: SecretStr | None = Field(
        None,
        description="The token the dashboard's sign-in asks for (16 characters or more). "
        "Unset: one is made up at each start and printed (loopback only).",
    )
    dashboard_secure_cookie: bool = Field(
        False,
        description="Mark the dashboard's session cookie Secure (set it when the dashboard "
        "is reached over HTTPS, through a proxy that terminates TLS).",
    )
    webphone_password: SecretStr | None = Field(
        None,
        description="The browser phone's SIP password (the PBX's `webphone` endpoint); set, "
        "the dashboard offers 'Call the agent' (the managed Asterisk makes one: "
        "`voiceos-switch lab up` passes it on).",
    )
    webphone_user: str = Field("webphone", description="The browser phone's SIP user.")
    webphone_ws: str | None = Field(
        None,
        description="The PBX's SIP-over-WebSocket address for the browser phone (default "
        "ws://127.0.0.1:<asterisk_http_port>/ws).",
    )
    webphone_number: str = Field("100", description="The number the browser phone calls.")
    otel: bool = Field(
        False,
        description="Export OpenTelemetry traces of calls and turns (OTLP/HTTP; the "
        "standard OTEL_EXPORTER_OTLP_* variables say where).",
    )
    max_calls: int = Field(1000, ge=1, description="Concurrent calls accepted.")
    drain_timeout_s: float = Field(
        300.0,
        ge=0,
        description="On SIGTERM the bridge drains: it takes no new call and finishes the ones "
        "it has, for at most this long, then stops (a second SIGTERM, or Ctrl-C, stops it now).",
    )
    agent_check: str | None = Field(
        None,
        description="HOST:PORT where the bridge answers HAProxy's agent-check with its load: "
        "'ready N%' (the share of its capacity free, by calls and CPU) or 'drain'.",
    )
    handshake_timeout_s: float = Field(
        5.0, gt=0, description="A new connection must send its call id within this."
    )
    max_frame_bytes: int = Field(16384, ge=320, description="Largest frame accepted.")
    pacer_lead_frames: int = Field(
        1, ge=0, le=3, description="Frames the pacer may send ahead of real time."
    )
    max_send_buffer_ms: int = Field(
        2000,
        ge=100,
        description="A call whose socket backs up by more than this much audio is dropped.",
    )

    record_calls: bool = Field(
        True, description="Record each call's caller and agent legs as WAV files on the bridge."
    )
    recordings_dir: Path | None = Field(
        None, description="Where the recordings go (default: state_dir/recordings)."
    )

    # Asterisk manager -----------------------------------------------------
    ami_host: str = "127.0.0.1"
    ami_port: int = 5038
    region: str | None = Field(
        None,
        description="Where this cell runs (a name like 'us-east'): agent.deploy(regions=...) "
        "serves a number only in the cells of its regions.",
    )
    ami_hosts: str | None = Field(
        None,
        description="Several Asterisks whose calls this bridge serves, 'host:port,host:port' "
        "(one AMI connection to each, the same user and secret); default: "
        "VOICEOS_AMI_HOST:VOICEOS_AMI_PORT alone.",
    )
    ami_username: str = "voiceos"
    ami_secret: SecretStr | None = Field(
        None, description="AMI secret. Unset: the managed Asterisk's generated one."
    )

    # FreeSWITCH -------------------------------------------------------------
    freeswitch_stream: str | None = Field(
        None,
        description="Address the mod_audio_stream WebSocket server listens on "
        "(e.g. 127.0.0.1:9093). Unset: no FreeSWITCH media.",
    )
    stream_token: SecretStr | None = Field(
        None,
        description="Token FreeSWITCH must present (URL path or Bearer header); "
        "required with freeswitch_stream, at least 16 characters.",
    )
    allow_remote_stream: bool = Field(
        False, description="Permit a non-loopback WebSocket listener (it is token-authenticated)."
    )
    stream_playback: str = Field(
        "files",
        description="How FreeSWITCH plays agent audio: 'files' (upstream mod_audio_stream, "
        "played with uuid_broadcast), 'inject' (forks that play streamAudio directly), "
        "'fork' (mod_audio_fork playAudio/killAudio).",
    )
    stream_chunk_ms: int = Field(
        200,
        ge=20,
        le=2000,
        description="Least agent audio per streamAudio message while more is coming "
        "(each message costs FreeSWITCH a short seam of silence).",
    )
    freeswitch_watchdog_s: float = Field(
        3.0,
        ge=0,
        le=60,
        description="FreeSWITCH moves a call to the dialplan's voiceos_fallback (a person) "
        "this long after the bridge last said it has the call; the shipped dialplan "
        "schedules the first move with the same value. 0: the bridge does not keep it up.",
    )
    esl_host: str = "127.0.0.1"
    esl_port: int = 8021
    esl_password: SecretStr | None = Field(
        None, description="Event Socket password. Unset: no FreeSWITCH call control."
    )
    esl_outbound: str | None = Field(
        None,
        description="Accept FreeSWITCH outbound event-socket connections here (the dialplan's "
        "'socket HOST:PORT async full'), e.g. 127.0.0.1:9094; each call's stream and control "
        "then run over its own connection.",
    )
    freeswitch_recordings_dir: str = Field(
        "/tmp", description="Directory on the FreeSWITCH host for uuid_record files."
    )

    # Managed Asterisk (tests and the lab) --------------------------------
    state_dir: Path = Field(default_factory=default_state_dir)
    asterisk_root: Path | None = Field(
        None, description="Sandbox root for the managed Asterisk (default: state_dir/asterisk)."
    )
    debian_mirror: str | None = Field(
        None, description="Debian mirror URI; default: read from this machine's apt sources."
    )
    sip_port: int = 5060
    carrier_sim_port: int = 5062
    #: where the lab carrier reaches a FreeSWITCH's ``voiceos`` SIP profile
    #: (``voiceos-switch call --pbx freeswitch``)
    lab_freeswitch_sip_port: int = 5080
    lab_carrier_target: str | None = Field(
        None,
        description="Where the managed Asterisk's lab carrier sends its calls, 'host:port' "
        "(default: this Asterisk's own SIP port; a SIP proxy's to call through it).",
    )
    human_extension: str = Field("operator", description="Default human handoff target.")
    asterisk_bridges: str | None = Field(
        None,
        description="The bridges the managed Asterisk's dialplan tries in turn, "
        "'host:port&host:port' (default: VOICEOS_AUDIOSOCKET alone).",
    )
    asterisk_bridge_order: str = Field(
        "spread",
        pattern="^(spread|in-order)$",
        description="How the managed Asterisk's dialplan picks among several bridges: "
        "'spread' starts each call at a random one (then the rest in turn), "
        "'in-order' always tries the first one first (a primary and its backups).",
    )
    asterisk_sip_proxy: str | None = Field(
        None,
        description="SIP proxies in front of the managed Asterisk (Kamailio), "
        "'host:port,host:port': their INVITEs are carrier calls.",
    )
    asterisk_rtp_ports: str = Field(
        "20000-20999",
        pattern=r"^\d+-\d+$",
        description="The managed Asterisk's RTP port range (a second instance on the "
        "same machine takes its own).",
    )
    asterisk_http_port: int = Field(
        8088,
        description="The managed Asterisk's HTTP server on loopback: the browser phone's "
        "SIP over WebSocket (ws://127.0.0.1:PORT/ws).",
    )
    lab_redis_port: int = Field(6379, description="`voiceos-switch lab`: its redis-server.")
    lab_dashboard_port: int = Field(8089, description="`voiceos-switch lab`: its dashboard.")
    lab_metrics_port: int = Field(9464, description="`voiceos-switch lab`: the bridge's /metrics.")

    # Conversation providers ---------------------------------------------
    llm: str | None = Field(
        None,
        description="Replaces a conversational Agent's model, as deployed: e.g. "
        "'openai:smollm2,local' to use an LLM server with the embedded model behind it.",
    )
    llm_base_url: str | None = Field(
        None, description="Base URL of an OpenAI-compatible server, for model='openai:<name>'."
    )
    llm_api_key: SecretStr | None = None
    llm_token_timeout_s: float = Field(
        6.0, gt=0, description="A model silent this long is replaced by the next in the chain."
    )
    stt: str = Field(
        "moonshine",
        description="Speech recogniser(s): 'moonshine' (Moonshine base, offline: as accurate "
        "as Whisper tiny.en on phone speech at a third of its decode time), 'whisper', "
        "'openai:<model>', 'vosk-server:ws://HOST:PORT'; a comma-separated chain falls back "
        "in order.",
    )
    read_emotion: bool = Field(
        True,
        description="Read the caller's emotion on every call (emotion_detected); "
        "Agent(read_emotion=...) decides for one agent.",
    )
    stt_threads: int = Field(
        1, ge=1, le=8, description="Threads of the embedded Moonshine recogniser."
    )
    stt_model_dir: Path | None = Field(
        None, description="A CTranslate2 Whisper model directory (default: Whisper tiny.en)."
    )
    stt_base_url: str | None = Field(
        None, description="OpenAI-compatible transcription server (default: llm_base_url)."
    )
    stt_api_key: SecretStr | None = None
    stt_timeout_s: float = Field(
        5.0, gt=0, description="A recogniser slower than this is replaced by the next."
    )
    tts_base_url: str | None = Field(
        None, description="OpenAI-compatible speech server for voice='openai:<voice>'."
    )
    tts_api_key: SecretStr | None = None
    tts_model: str = Field("tts-1", description="Model name sent to the speech server.")

    # Call records and analytics --------------------------------------------
    database_url: str | None = Field(
        None,
        description="Where call records go: a SQLAlchemy URL (sqlite:///path or "
        "postgresql+psycopg://...). Default: SQLite in WAL mode at state_dir/calls.db.",
    )
    redis_url: str | None = Field(
        None,
        description="Redis for the Celery analysis workers (broker and results), e.g. "
        "redis://127.0.0.1:6379/0. Unset: records are kept, no analyses run.",
    )
    event_stream: bool = Field(
        True,
        description="With redis_url: append every call's events to the Redis Stream "
        "voiceos:events, so several bridges feed one viewer.",
    )
    bridge_name: str | None = Field(
        None,
        description="This bridge's name on the event stream, in its call records and "
        "logs (default: host name and AudioSocket port).",
    )
    analysis_model: str = Field(
        "local", description="The model that writes call summaries (names as for Agent(model=...))."
    )
    job_visibility_timeout_s: int = Field(
        300,
        ge=5,
        description="A task whose worker died is handed to another after this long.",
    )
    price_telephony_per_min: float = Field(0.0, ge=0, description="Carrier cost per minute.")
    price_stt_per_min: float = Field(0.0, ge=0, description="Speech recognition per audio minute.")
    price_llm_per_1k_tokens_in: float = Field(0.0, ge=0)
    price_llm_per_1k_tokens_out: float = Field(0.0, ge=0)
    price_tts_per_1k_chars: float = Field(0.0, ge=0)
    topic_similarity: float = Field(
        0.5,
        ge=0,
        le=1,
        description="A call joins the topic of the most similar earlier call at this cosine.",
    )
    qa_min_asr_confidence: float = Field(
        0.6, ge=0, le=1, description="Calls whose re-transcription is less sure are flagged."
    )
    qa_long_silence_s: float = Field(
        8.0, gt=0, description="A gap this long between turns is flagged."
    )

    # Agent ----------------------------------------------------------------
    greeting: str = "Hello, you are speaking with the voice OS agent. Press a key on your phone."
    log_level: str = "INFO"

    @field_validator("audiosocket")
    @classmethod
    def _check_addr(cls, v: str) -> str:
        split_hostport(v)
        return v

    @field_validator("freeswitch_stream", "esl_outbound")
    @classmethod
    def _check_stream_addr(cls, v: str | None) -> str | None:
        if v is not None:
            split_hostport(v)
        return v

    @field_validator("stream_playback")
    @classmethod
    def _check_playback(cls, v: str) -> str:
        if v not in ("files", "inject", "fork"):
            raise ValueError("stream_playback must be 'files', 'inject' or 'fork'")
        return v

    @property
    def resolved_recordings_dir(self) -> Path | None:
        if not self.record_calls:
            return None
        return self.recordings_dir or (self.state_dir / "recordings")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'calls.db'}"

    @property
    def resolved_bridge_name(self) -> str:
        if self.bridge_name:
            return self.bridge_name
        import socket

        return f"{socket.gethostname()}:{split_hostport(self.audiosocket)[1]}"

    @property
    def asterisk_dir(self) -> Path:
        return self.asterisk_root or (self.state_dir / "asterisk")

    def resolved_ami_secret(self) -> str | None:
        """The configured AMI secret, or the one the managed Asterisk generated."""
        if self.ami_secret is not None:
            return self.ami_secret.get_secret_value()
        path = self.asterisk_dir / "ami-secret"
        try:
            return path.read_text().strip() or None
        except OSError:
            return None
