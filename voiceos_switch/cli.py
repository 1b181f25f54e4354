"""The ``voiceos-switch`` command."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from pathlib import Path

from . import log
from .settings import Settings, split_hostport


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
    from .agent import Agent, ConfigurationError

    overrides = {}
    if args.audiosocket:
        try:
            split_hostport(args.audiosocket)
        except ValueError as exc:
            return _fail(str(exc))
        overrides["audiosocket"] = args.audiosocket
    if args.freeswitch:
        try:
            split_hostport(args.freeswitch)
        except ValueError as exc:
            return _fail(str(exc))
        overrides["freeswitch_stream"] = args.freeswitch
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
