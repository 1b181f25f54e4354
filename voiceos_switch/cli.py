"""The ``voiceos-switch`` command."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import log
from .settings import Settings, split_hostport

if TYPE_CHECKING:
    from .lab.local import CallReport, LocalLab
    from .records.store import Store


def _fail(message: str) -> int:
    print(f"voiceos-switch: error: {message}", file=sys.stderr)
    return 2


def load_agent(spec: str) -> object:
    """``module:attribute`` -> the Agent object it names."""
    from .agent import Agent

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--agent wants module:attribute, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from exc
    agent = getattr(module, attr, None)
    if not isinstance(agent, Agent):
        raise ValueError(f"{spec} is not a voiceos_switch.Agent (got {type(agent).__name__})")
    return agent


def cmd_serve(args: argparse.Namespace) -> int:
    from .agent import Agent
    from .errors import ConfigurationError

    overrides = {}
    for address, setting in (
        (args.audiosocket, "audiosocket"),
        (args.freeswitch, "freeswitch_stream"),
        (args.metrics, "metrics"),
        (args.dashboard, "dashboard"),
    ):
        if address:
            try:
                split_hostport(address)
            except ValueError as exc:
                return _fail(str(exc))
            overrides[setting] = address
    if args.record_dir:
        overrides["recordings_dir"] = Path(args.record_dir)
    settings = Settings(**overrides)
    try:
        if args.agent:
            agent = load_agent(args.agent)
            assert isinstance(agent, Agent)
            agent.settings = agent.settings.model_copy(update=overrides)
        else:
            agent = Agent(settings=settings)
        agent.serve()
    except (ValueError, ConfigurationError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        where = settings.audiosocket
        if settings.freeswitch_stream:
            where += f" or {settings.freeswitch_stream}"
        if settings.metrics:
            where += f" or {settings.metrics}"
        if settings.dashboard:
            where += f" or {settings.dashboard}"
        return _fail(f"cannot listen on {where}: {exc.strerror or exc}")
    return 0


def cmd_call(args: argparse.Namespace) -> int:
    from .pbx.asterisk import AsteriskError
    from .pbx.labcall import copy_out, place_call

    play = Path(args.play) if args.play else None
    if play is not None and not play.exists():
        return _fail(f"{play}: no such file")
    try:
        result = asyncio.run(
            place_call(
                args.to,
                play=play,
                dtmf=args.dtmf,
                delay=args.delay,
                hold=args.hold,
                caller_id=args.caller_id,
                timeout=args.timeout,
                pbx=args.pbx,
            )
        )
    except (AsteriskError, ValueError) as exc:
        return _fail(str(exc))
    if not result.answered:
        return _fail(f"the call to {args.to} was not answered ({result.hangup_cause})")
    copy_out(result.heard, Path(args.record) if args.record else None)
    copy_out(result.sent, Path(args.record_sent) if args.record_sent else None)
    heard = "-"
    if result.heard is not None:
        from .pbx.labcall import read_wav_mono16

        pcm, rate = read_wav_mono16(result.heard)
        heard = f"{len(pcm) / 2 / rate:.1f} s"
    print(
        f"call {result.tag}: answered, {result.duration_s:.1f} s, ended: {result.hangup_cause}; "
        f"heard {heard}" + (f" -> {args.record}" if args.record else "")
    )
    return 0


def _pbx_arg(text: str) -> Any:
    from .pbx.kamailio import Pbx

    address, _, limit = text.partition("=")
    split_hostport(address)
    return Pbx(address, int(limit) if limit else 0)


def cmd_kamailio(args: argparse.Namespace) -> int:
    from .pbx.kamailio import SipProxy, SipProxyError

    workdir = Path(args.dir)
    try:
        pbxs = [_pbx_arg(p) for p in args.pbx]
    except ValueError as exc:
        return _fail(f"--pbx wants HOST:PORT or HOST:PORT=MAX_CALLS: {exc}")
    proxy = SipProxy(workdir, pbxs, listen=args.listen)
    try:
        if args.action == "config":
            if not pbxs:
                return _fail("name the PBXs behind the proxy: --pbx HOST:PORT[=MAX_CALLS] ...")
            proxy.write()
            checked = ""
            if shutil.which("kamailio") or Path("/usr/sbin/kamailio").exists():
                proxy.check()
                checked = " (kamailio -c: the configuration is valid)"
            print(f"wrote {proxy.config_path} and {workdir / 'dispatcher.list'}{checked}")
            print(f"run: kamailio -DD -E -f {proxy.config_path}")
        elif args.action == "status":
            for uri, flags in sorted(proxy.states().items()):
                state = "active" if flags.startswith("A") else "inactive"
                print(f"{uri}  {state} ({flags})")
        elif args.action in ("drain", "undrain"):
            if not pbxs:
                return _fail(f"which PBX? --pbx HOST:PORT (see `kamailio status --dir {workdir}`)")
            for pbx in pbxs:
                (proxy.drain if args.action == "drain" else proxy.undrain)(pbx)
                done = "no new calls" if args.action == "drain" else "taking calls again"
                print(f"{pbx.uri}: {done}")
    except SipProxyError as exc:
        return _fail(str(exc))
    return 0


def cmd_asterisk(args: argparse.Namespace) -> int:
    from .pbx.asterisk import AsteriskError, AsteriskSandbox

    sandbox = AsteriskSandbox(Settings())
    try:
        if args.action == "up":
            sandbox.up(reinstall=args.reinstall)
        elif args.action == "down":
            sandbox.down()
        elif args.action == "status":
            print(
                "running"
                if sandbox.running()
                else ("stopped" if sandbox.installed else "not installed")
            )
        elif args.action == "cli":
            print(sandbox.cli(" ".join(args.command)), end="")
        elif args.action == "config":
            out = Path(args.out or "asterisk-rendered")
            out.mkdir(parents=True, exist_ok=True)
            for name, text in sandbox.rendered_configs(lab=args.lab).items():
                (out / name).write_text(text)
            print(
                f"wrote {out}/ : copy these files to /etc/asterisk on your PBX "
                "(manager.conf holds the AMI secret: keep it mode 640)"
            )
    except AsteriskError as exc:
        return _fail(str(exc))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(Path(args.wav) if args.wav else None, args.json, args.voice)


def _caller_audio(path: Path, channel: str) -> tuple[bytes, int]:
    """A WAV's caller: its left or right channel, or all of them mixed
    (the bridge's own recordings have the caller on the left)."""
    import wave

    import numpy as np

    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError("only 16-bit PCM WAV files are read")
        rate, channels = w.getframerate(), w.getnchannels()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    if channels > 1:
        frames = data[: len(data) // channels * channels].reshape(-1, channels)
        if channel == "mix":
            data = frames.mean(axis=1).astype("<i2")
        else:
            data = frames[:, 0 if channel == "left" else 1].copy()
    return data.astype("<i2").tobytes(), rate


def cmd_emotion(args: argparse.Namespace) -> int:
    import json
    import wave

    from .audio.pcm import resample
    from .conversation.emotion import state_name
    from .conversation.recorded import read_recording
    from .providers import registry
    from .providers.emotion import STATES, EmotionReader

    thresholds: dict[str, float] = {}
    for item in args.threshold or []:
        name, _, value = item.partition("=")
        try:
            thresholds[state_name(name)] = float(value)
        except ValueError as exc:
            return _fail(f"--threshold {item!r}: STATE=NUMBER, e.g. frustrated=0.5 ({exc})")
    audio = []
    for name in args.wav:
        path = Path(name)
        try:
            pcm, rate = _caller_audio(path, args.channel)
        except (OSError, EOFError, ValueError, wave.Error) as exc:
            return _fail(f"{path}: cannot read it as a WAV file ({exc or type(exc).__name__})")
        if rate not in (8000, 16000):
            pcm, rate = resample(pcm, rate, 16000), 16000
        audio.append((path, pcm, rate))
    settings = Settings(stt=args.stt) if args.stt else Settings()
    # the scores are the output here: the reader's own log lines would repeat them
    logging.getLogger("voiceos_switch.providers.emotion.reader").setLevel(logging.WARNING)
    print(f"[emotion] loading the recogniser ({settings.stt})", file=sys.stderr)
    stt = registry.make_stt(settings)

    async def run() -> list[dict[str, Any]]:
        await stt.load()
        out = []
        for i, (path, pcm, rate) in enumerate(audio, 1):
            seconds = len(pcm) / 2 / rate
            print(f"[emotion] {i}/{len(audio)} {path} ({seconds:.1f} s)", file=sys.stderr)
            reader = EmotionReader(rate, thresholds=thresholds)
            utterances = await read_recording(pcm, rate, stt, reader=reader)
            out.append(
                {
                    "file": str(path),
                    "sample_rate": rate,
                    "duration_s": round(seconds, 2),
                    "thresholds": reader.thresholds,
                    "utterances": [u.as_dict() for u in utterances],
                }
            )
        return out

    results = asyncio.run(run())
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        print(f"{result['file']}: {len(result['utterances'])} utterances")
        limits = "  ".join(f"{s} {result['thresholds'][s]:.2f}" for s in STATES)
        print(f"  thresholds: {limits}")
        for u in result["utterances"]:
            scores = " ".join(f"{s[:5]} {u['scores'][s]:.2f}" for s in STATES)
            events = ", ".join(
                e["type"] + (" (stronger)" if e["rising"] else "") for e in u["events"]
            )
            print(
                f"  {u['start_s']:6.1f}-{u['end_s']:6.1f} s  {scores}  conf {u['confidence']:.2f}"
                f"  {u['text']!r}" + (f"  -> {events}" if events else "")
            )
    return 0


def _store() -> Store:
    from .records.store import Store

    store = Store(Settings().resolved_database_url)
    store.migrate()
    return store


def _when(ts: float | None) -> str:
    import datetime

    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def cmd_calls(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    try:
        store = _store()
        return _calls(args, store)
    except SQLAlchemyError as exc:
        where = Settings().resolved_database_url
        return _fail(f"cannot read the call store at {where}: {exc.__class__.__name__}: {exc}")
    except BrokenPipeError:
        return 0


def _calls(args: argparse.Namespace, store: Store) -> int:
    import csv
    import json

    if args.action == "list":
        rows = store.list_calls(args.limit)
        if not rows:
            print("no calls recorded yet")
            return 0
        print(
            f"{'call id':36}  {'started':19}  {'pbx':10} {'caller':>12} {'min':>6} "
            f"{'cost':>9}  analysed"
        )
        for r in rows:
            print(
                f"{r['id']:36}  {_when(r['started_at']):19}  {r['pbx']:10} {r['caller'] or '-':>12} "
                f"{r['duration_s'] / 60:6.2f} {r['cost_total']:9.4f}  "
                f"{'yes' if r['completed_at'] else 'no'}"
            )
        return 0
    if args.action == "show":
        if not args.id:
            return _fail("calls show needs a call id (see `voiceos-switch calls list`)")
        call_id = store.find_call(args.id)
        if call_id is None:
            return _fail(f"no single call matches {args.id!r} (see `voiceos-switch calls list`)")
        record = store.get_call(call_id)
        assert record is not None
        record["analyses"] = store.get_analyses(call_id)
        if args.json:
            print(json.dumps(record, indent=2))
            return 0
        _print_call(record)
        failed = {
            k: v["result"].get("error")
            for k, v in record["analyses"].items()
            if v["status"] == "failed"
        }
        return 1 if failed else 0
    if args.action == "export":
        records = list(store.all_records())
        if args.format == "json":
            json.dump(records, sys.stdout, indent=2)
            print()
            return 0
        writer = csv.writer(sys.stdout)
        writer.writerow(
            [
                "id",
                "pbx",
                "agent",
                "caller",
                "called",
                "started_at",
                "duration_s",
                "turns",
                "transfers",
                "flags",
                "cost_total",
                "cost_per_minute",
            ]
        )
        for r in records:
            writer.writerow(
                [
                    r["id"],
                    r["pbx"],
                    r["agent"],
                    r["caller"],
                    r["called"],
                    _when(r["started_at"]),
                    r["duration_s"],
                    len(r["turns"]),
                    ";".join(r["transfers"]),
                    len(r["review_flags"]),
                    r["cost"]["total"],
                    r["cost"]["per_minute"],
                ]
            )
        return 0
    if args.action == "topics":
        import numpy as np

        from .jobs.analyses import _caller_text, cluster_calls

        found = store.results_of_kind("topics")
        texts = {r["id"]: _caller_text(r) for r in store.all_records()}
        vectors = {
            i: np.asarray(v["embedding"], dtype=np.float32)
            for i, v in found.items()
            if v.get("embedding") and i in texts
        }
        if not vectors:
            print("no analysed calls yet (topics need the workers: VOICEOS_REDIS_URL)")
            return 0
        clusters = cluster_calls(vectors, {i: texts[i] for i in vectors})
        by: dict[str, list[str]] = {}
        for call_id, name in clusters.items():
            by.setdefault(name, []).append(call_id)
        for name, ids in sorted(by.items(), key=lambda kv: -len(kv[1])):
            print(f"{name} ({len(ids)} calls)")
            for call_id in ids[:3]:
                print(f"    {call_id[:8]}  {texts[call_id][:70]}")
        return 0
    if args.action == "costs":
        rows = store.cost_rollup()
        print(f"{'day':10}  {'agent':16} {'calls':>6} {'minutes':>9} {'cost':>10} {'per min':>9}")
        for r in rows:
            print(
                f"{r['day']:10}  {r['agent']:16} {r['calls']:>6} {r['minutes']:>9.2f} "
                f"{r['cost']:>10.4f} {r['cost_per_minute']:>9.4f}"
            )
        return 0
    return _fail(f"unknown action {args.action}")


def _print_call(rec: dict[str, Any]) -> None:
    print(f"call {rec['id']}  ({rec['pbx']}, agent {rec['agent']})")
    print(
        f"  from {rec['caller'] or '-'} to {rec['called'] or '-'}, {_when(rec['started_at'])}"
        f", {float(rec['duration_s']):.1f} s, ended: {rec['end_reason'] or '-'}"
    )
    cost = rec["cost"]
    print(f"  cost {cost['total']:.4f} ({cost['per_minute']:.4f} per minute)")
    print("  transcript:")
    for t in rec["turns"]:
        cut = " [interrupted]" if t["interrupted"] else ""
        print(f"    {t['role']:>6}: {t['text']}{cut}")
    if rec["transfers"]:
        print(f"  handed to: {', '.join(rec['transfers'])}")
    announced = [
        f"{name} at {e['t']:.1f} s ({e['scores'][name]:.2f})"
        for e in rec.get("emotions") or []
        for name in e.get("announced", [])
    ]
    if announced:
        print(f"  emotion: {'; '.join(announced)}")
    analyses = rec.get("analyses") or {}
    if not analyses:
        print("  analyses: none yet")
    for kind, a in sorted(analyses.items()):
        if a["status"] == "failed":
            print(f"  {kind}: FAILED: {a['result'].get('error')}")
        elif kind == "summary":
            print(f"  summary: {a['result']['summary']} ({a['result']['disposition']})")
        elif kind == "qa":
            flags = [f"{f['kind']} ({f['reason']})" for f in a["result"]["flags"]]
            print(f"  qa: {'; '.join(flags) or 'no flags'}")
        elif kind == "topics":
            print(f"  topics: {', '.join(a['result']['keywords'])} -> {a['result']['cluster']}")
        elif kind == "sentiment":
            res = a["result"]
            voice = [s for s, c in res.get("live_vs_words", {}).items() if c["live_only"]]
            extra = f"; heard in the voice only: {', '.join(voice)}" if voice else ""
            print(f"  sentiment: {res['label']} ({res['overall']}){extra}")
        elif kind == "transcript":
            res = a["result"]
            print(
                f"  re-transcribed: asr confidence {res.get('asr_confidence')}"
                if "skipped" not in res
                else f"  re-transcribed: {res['skipped']}"
            )
        elif kind == "cost":
            ok = (
                "matches the record" if a["result"]["matches_record"] else "DIFFERS from the record"
            )
            print(f"  cost check: {ok}")


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Every bridge's calls: live from the Redis Stream, stored from the database."""
    import asyncio

    from .dashboard import DEFAULT_LISTEN, announce, phone_config, resolve_token, start_server
    from .dashboard.app import create_app
    from .dashboard.feed import LiveFeed, StreamFeed
    from .errors import ConfigurationError
    from .records.store import Store

    settings = Settings()
    listen = args.listen or settings.dashboard or DEFAULT_LISTEN
    try:
        host, _ = split_hostport(listen)
        token, generated = resolve_token(settings, host)
        phone = phone_config(settings)
    except (ValueError, ConfigurationError) as exc:
        return _fail(str(exc))
    url = settings.resolved_database_url
    try:
        store = Store(url)
        store.migrate()
    except Exception as exc:  # noqa: BLE001 - say which database, and why
        return _fail(f"cannot open the call store at {url}: {exc}")
    feed: LiveFeed | StreamFeed
    if settings.redis_url and settings.event_stream:
        feed = StreamFeed(settings.redis_url)
    else:
        print(
            "[dashboard] no live view: set VOICEOS_REDIS_URL (the bridges' event stream), "
            "or serve the dashboard from the bridge (voiceos-switch serve --dashboard); "
            "stored calls are shown",
            file=sys.stderr,
        )
        feed = LiveFeed()
    app = create_app(
        lambda: store,
        feed,
        token,
        secure_cookie=settings.dashboard_secure_cookie,
        variants=args.variants.split(",") if args.variants else (),
        phone=phone,
    )

    async def run() -> None:
        server = await start_server(app, listen)
        announce(host, server.port, token, generated)
        try:
            assert server.task is not None
            await server.task
        finally:
            await feed.close()
            await server.close()

    try:
        asyncio.run(run())
    except OSError as exc:
        return _fail(f"cannot listen on {listen}: {exc.strerror or exc}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from .jobs.kinds import ALL_QUEUES

    settings = Settings()
    if not settings.redis_url:
        return _fail("set VOICEOS_REDIS_URL (e.g. redis://127.0.0.1:6379/0) for the workers")
    from .jobs.app import app

    queues = args.queues or ",".join(ALL_QUEUES)
    argv = [
        "worker",
        "-Q",
        queues,
        "--concurrency",
        str(args.concurrency),
        "--loglevel",
        args.loglevel,
        "-n",
        f"voiceos-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    app.worker_main(argv)
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    from .lab.local import LabError, LocalLab
    from .pbx.asterisk import AsteriskError

    lab = LocalLab(Settings())
    try:
        if args.action == "up":
            state = lab.up(agent=args.agent)
            secret = lab.secrets()
            print(f"dashboard: {state['dashboard']}  (token: {secret['dashboard_token']})")
            print("call the agent: voiceos-switch lab call  (or 'Call the agent' on the dashboard)")
        elif args.action == "down":
            lab.down()
        elif args.action == "status":
            return _lab_status(lab)
        elif args.action == "call":
            # the call's own AMI chatter is not for the person calling
            logging.getLogger("voiceos_switch").setLevel(logging.WARNING)
            if args.compose:
                return _compose_call(Path(args.project).resolve(), args.question)
            return _lab_call(asyncio.run(lab.call(args.question)))
        elif args.action == "build":
            from .lab.images import LabImageError, prepare, write_env

            project = Path(args.project).resolve()
            try:
                prepare(
                    project, Settings(), lambda m: print(f"[lab] {m}", file=sys.stderr, flush=True)
                )
                env_path = project / ".env"
                write_env(env_path)
            except LabImageError as exc:
                return _fail(str(exc))
            print(
                f"the images' bases and wheels are ready; secrets in {env_path} (mode 600).\n"
                "Next: docker-compose up -d --build   (or: docker compose up -d --build)"
            )
    except (LabError, AsteriskError) as exc:
        return _fail(str(exc))
    return 0


def _lab_status(lab: LocalLab) -> int:
    statuses = lab.status()
    if not statuses:
        print("the lab is not up (voiceos-switch lab up)")
        return 3
    for st in statuses:
        pid = f"pid {st.pid}" if st.pid else ""
        print(
            f"{st.name:<10} {st.state.upper() if st.state == 'dead' else st.state:<8} "
            f"{pid:<10} {st.where}"
        )
        if st.state == "dead":
            print(f"{'':<10} died; last log line: {st.last_line.strip() or '-'}")
            print(f"{'':<10} log: {st.log}")
    return 0 if all(st.state == "running" for st in statuses) else 1


def _compose_call(project: Path, question: str) -> int:
    """``lab call --compose``: the same demo call into the compose lab, with
    the ports, AMI secret and data folder its ``.env`` names."""
    from .lab.images import read_env
    from .lab.local import demo_call

    env = read_env(project / ".env")
    if "VOICEOS_AMI_SECRET" not in env:
        return _fail(f"{project / '.env'} has no AMI secret: run `voiceos-switch lab build` first")
    data = Path(env.get("VOICEOS_LAB_DATA") or project / "build/lab/data")
    if not data.is_absolute():
        data = project / data
    settings = Settings(ami_port=int(env.get("VOICEOS_AMI_PORT", "5038")))
    dashboard = f"http://127.0.0.1:{env.get('VOICEOS_LAB_DASHBOARD_PORT', '8089')}/"
    report = asyncio.run(
        demo_call(
            question,
            settings,
            keep=data / "calls",
            database_url=f"sqlite:///{data / 'calls.db'}",
            dashboard=dashboard,
            lab_dir=data / "spool",
            ami_secret=env["VOICEOS_AMI_SECRET"],
        )
    )
    return _lab_call(report)


def _lab_call(report: CallReport) -> int:
    if not report.answered:
        return _fail(f"the demo call was not answered ({report.hangup_cause})")
    print(
        f"call {report.call_id or '?'}: answered, ended: {report.hangup_cause}; "
        f"the caller heard {report.heard_s:.1f} s of the agent -> {report.heard}"
    )
    for turn in report.turns:
        cut = "  [interrupted]" if turn.get("interrupted") else ""
        print(f"  {turn['role']:>6}: {turn['text']}{cut}")
    if report.dashboard_url:
        print(f"on the dashboard: {report.dashboard_url}")
    spoke = any(t["role"] == "agent" and t["text"] for t in report.turns)
    if report.record is None:
        return _fail(
            "the call was answered but the bridge wrote no record of it; see the "
            "bridge's log (voiceos-switch lab status)"
        )
    return 0 if spoke else _fail("the agent said nothing on the call")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voiceos-switch", description="AI voice agents on Asterisk and FreeSWITCH."
    )
    sub = parser.add_subparsers(dest="cmd", required=True)

    serve = sub.add_parser(
        "serve", help="run the bridge (AudioSocket and FreeSWITCH servers, and the agent)"
    )
    serve.add_argument(
        "--audiosocket",
        metavar="HOST:PORT",
        help="listen address (default 127.0.0.1:9092, or VOICEOS_AUDIOSOCKET)",
    )
    serve.add_argument(
        "--freeswitch",
        metavar="HOST:PORT",
        help="also accept FreeSWITCH mod_audio_stream connections here (e.g. 127.0.0.1:9093; "
        "needs VOICEOS_STREAM_TOKEN, and VOICEOS_ESL_PASSWORD for playback and control)",
    )
    serve.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (or VOICEOS_METRICS; "
        "beyond loopback it needs VOICEOS_METRICS_TOKEN)",
    )
    serve.add_argument(
        "--dashboard",
        metavar="HOST:PORT",
        help="serve the live dashboard of this bridge's calls (or VOICEOS_DASHBOARD; "
        "sign in with VOICEOS_DASHBOARD_TOKEN, or the token printed at start)",
    )
    serve.add_argument("--agent", metavar="MODULE:ATTR", help="your Agent, e.g. app:agent")
    serve.add_argument("--record-dir", metavar="DIR", help="write both legs of each call as WAV")
    serve.set_defaults(func=cmd_serve)

    call = sub.add_parser("call", help="place a lab call through the carrier trunk")
    call.add_argument("--to", required=True, help="number to dial (e.g. 100; 10016 for 16 kHz)")
    call.add_argument("--play", metavar="WAV", help="what the caller says")
    call.add_argument("--dtmf", metavar="DIGITS", help="keys the caller presses after speaking")
    call.add_argument("--record", metavar="WAV", help="write what the caller heard here")
    call.add_argument("--record-sent", metavar="WAV", help="write what the caller sent here")
    call.add_argument("--delay", type=float, default=1.0, help="seconds before the caller speaks")
    call.add_argument("--hold", type=float, default=4.0, help="seconds to stay on the line after")
    call.add_argument("--caller-id", default="15550100")
    call.add_argument("--timeout", type=float, default=120.0)
    call.add_argument(
        "--pbx",
        choices=["asterisk", "freeswitch"],
        default="asterisk",
        help="whose trunk the lab carrier calls: the managed Asterisk, or a FreeSWITCH's "
        "voiceos profile on this machine (VOICEOS_LAB_FREESWITCH_SIP_PORT, default 5080)",
    )
    call.set_defaults(func=cmd_call)

    demo = sub.add_parser(
        "demo", help="a whole scripted call on the embedded models, over AudioSocket on loopback"
    )
    demo.add_argument(
        "--wav", default="demo.wav", help="stereo recording (caller left, agent right)"
    )
    demo.add_argument("--json", action="store_true", help="print the report as JSON")
    demo.add_argument("--voice", default="espeak", help="the agent's voice: espeak or piper")
    demo.set_defaults(func=cmd_demo)

    emotion = sub.add_parser(
        "emotion",
        help="score recorded caller audio utterance by utterance (the live calls' emotion reader)",
    )
    emotion.add_argument("wav", nargs="+", help="16-bit PCM WAV files, one caller each")
    emotion.add_argument("--json", action="store_true", help="scores, cues and features as JSON")
    emotion.add_argument(
        "--channel",
        choices=["left", "right", "mix"],
        default="left",
        help="the caller's channel of a stereo file (the bridge's recordings: left)",
    )
    emotion.add_argument(
        "--threshold",
        action="append",
        metavar="STATE=P",
        help="announce a state at this score (repeatable), e.g. frustrated=0.5",
    )
    emotion.add_argument("--stt", help="the recogniser (default: VOICEOS_STT, moonshine)")
    emotion.set_defaults(func=cmd_emotion)

    calls = sub.add_parser("calls", help="the call records: list, show, export, costs, topics")
    calls.add_argument("action", choices=["list", "show", "export", "costs", "topics"])
    calls.add_argument("id", nargs="?", help="with show: a call id (or its first characters)")
    calls.add_argument("--limit", type=int, default=50, help="with list: how many, newest first")
    calls.add_argument("--format", choices=["json", "csv"], default="json", help="with export")
    calls.add_argument("--json", action="store_true", help="with show: the whole record as JSON")
    calls.set_defaults(func=cmd_calls)

    dash = sub.add_parser(
        "dashboard",
        help="the live dashboard of every bridge's calls (Redis Stream and call store)",
    )
    dash.add_argument(
        "--listen", metavar="HOST:PORT", help="default 127.0.0.1:8089, or VOICEOS_DASHBOARD"
    )
    dash.add_argument(
        "--variants",
        metavar="A,B",
        help="the prompt variants in the order to compare them (the first is the baseline)",
    )
    dash.set_defaults(func=cmd_dashboard)

    worker = sub.add_parser("worker", help="run a Celery worker for the post-call analyses")
    worker.add_argument("--queues", help="comma-separated (default: all of them)")
    worker.add_argument("--concurrency", type=int, default=1)
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(func=cmd_worker)

    lab = sub.add_parser(
        "lab",
        help="the whole system on this machine: Asterisk, bridge, Redis, worker, dashboard",
    )
    lab.add_argument(
        "action",
        choices=["up", "down", "status", "call", "build"],
        help="up/down/status/call: as processes here; build: the docker-compose "
        "lab's base images and its .env",
    )
    lab.add_argument(
        "--agent",
        default="voiceos_switch.demo:agent",
        help="with up: the bridge's agent (default: the demo shop agent)",
    )
    lab.add_argument(
        "--question",
        default="Hi. What are your opening hours on Saturday?",
        help="with call: what the caller asks",
    )
    lab.add_argument(
        "--project",
        default=".",
        help="with build and call --compose: the project folder (build context, .env)",
    )
    lab.add_argument(
        "--compose",
        action="store_true",
        help="with call: call the docker-compose lab (its .env says where) instead",
    )
    lab.set_defaults(func=cmd_lab)

    kam = sub.add_parser(
        "kamailio", help="the SIP tier: Kamailio's dispatcher in front of several PBXs"
    )
    kam.add_argument("action", choices=["config", "status", "drain", "undrain"])
    kam.add_argument(
        "--pbx",
        action="append",
        default=[],
        metavar="HOST:PORT[=MAX_CALLS]",
        help="a PBX behind the proxy (repeat for each)",
    )
    kam.add_argument("--listen", default="127.0.0.1:5070", help="the proxy's SIP address")
    kam.add_argument(
        "--dir",
        default="kamailio-rendered",
        help="where the configuration, dispatcher list and RPC socket live",
    )
    kam.set_defaults(func=cmd_kamailio)

    ast = sub.add_parser("asterisk", help="the managed Asterisk 22 for tests and the lab")
    ast.add_argument("action", choices=["up", "down", "status", "cli", "config"])
    ast.add_argument("command", nargs="*", help="with cli: the Asterisk CLI command")
    ast.add_argument("--reinstall", action="store_true", help="with up: rebuild the root")
    ast.add_argument("--out", metavar="DIR", help="with config: where to write the rendered files")
    ast.add_argument("--lab", action="store_true", help="with config: include the lab carrier")
    ast.set_defaults(func=cmd_asterisk)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log.setup(os.environ.get("VOICEOS_LOG_LEVEL", "INFO"))
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
