"""The shipped FreeSWITCH configuration: well-formed, safe by default, and
carrying what the bridge expects (the same files ran on a real FreeSWITCH
1.10.12, see docs/freeswitch.md)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from voiceos_switch.control.esl import fallback_group
from voiceos_switch.settings import Settings
from voiceos_switch.transports.audiostream import FALLBACK, parse_metadata, path_parts

ROOT = Path(__file__).parent.parent.parent
FILES = sorted((ROOT / "freeswitch-conf").rglob("*.xml")) + sorted(
    (ROOT / "dialplan" / "freeswitch").glob("*.xml")
)


def params(path: Path) -> dict[str, str]:
    return {p.get("name", ""): p.get("value", "") for p in ET.parse(path).iter("param")}


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_is_well_formed_and_has_no_default_password(path: Path) -> None:
    ET.parse(path)
    assert "ClueCon" not in path.read_text()


def test_event_socket_is_on_loopback_with_the_password_from_the_environment() -> None:
    p = params(ROOT / "freeswitch-conf/autoload_configs/event_socket.conf.xml")
    assert p["listen-ip"] == "127.0.0.1" and p["listen-port"] == str(Settings().esl_port)
    assert p["password"] == "$${voiceos_esl_password}"
    assert p["apply-inbound-acl"] == "loopback.auto"
    pre = ET.parse(ROOT / "freeswitch-conf/vars.xml").getroot()
    sets = {e.get("data", "").split("=", 1)[0]: e.get("data", "") for e in pre}
    assert sets["voiceos_esl_password"].endswith("printenv VOICEOS_ESL_PASSWORD")
    assert sets["voiceos_stream_token"].endswith("printenv VOICEOS_STREAM_TOKEN")


def test_modules_include_the_stream_and_the_event_socket() -> None:
    root = ET.parse(ROOT / "freeswitch-conf/autoload_configs/modules.conf.xml").getroot()
    loaded = {m.get("module") for m in root.iter("load")}
    assert {"mod_audio_stream", "mod_event_socket", "mod_sofia", "mod_dptools"} <= loaded


def test_the_trunk_profile_takes_calls_from_the_carrier_only_with_a_clocked_read() -> None:
    path = ROOT / "freeswitch-conf/sip_profiles/voiceos.xml"
    p = params(path)
    assert p["apply-inbound-acl"] == "carrier" and p["context"] == "voiceos-inbound"
    assert p["rtp-timer-name"] == "soft"  # without it a silent leg starves the stream
    gateways = [g.get("name") for g in ET.parse(path).iter("gateway")]
    assert gateways == ["carrier"]


def _actions(context: str) -> list[tuple[str, str]]:
    root = ET.parse(ROOT / "dialplan/freeswitch/voiceos_agent.xml").getroot()
    ctx = next(c for c in root.iter("context") if c.get("name") == context)
    return [(a.get("application", ""), a.get("data", "")) for a in ctx.iter("action")]


def test_the_agent_context_answers_streams_json_metadata_and_parks() -> None:
    actions = _actions("voiceos-agent")
    apps = [a for a, _ in actions]
    assert apps.index("answer") < apps.index("park")
    stream = next(d for a, d in actions if "uuid_audio_stream" in d)
    m = re.search(r"uuid_audio_stream\((\$\{uuid\}) start (\S+) (\S+) (\S+) (.*)\)\}$", stream)
    assert m, stream
    url, mix, rate, meta = m.group(2), m.group(3), m.group(4), m.group(5)
    assert url == "ws://$${voiceos_stream}/$${voiceos_stream_token}/${uuid}/${voiceos_rate}000"
    assert mix == "mono" and rate == "${voiceos_rate}k"
    # the URL names the call and its rate, whatever order the messages come in
    path = url.split("/", 3)[3].replace("${uuid}", "4f1c").replace("${voiceos_rate}", "16")
    assert path_parts("/" + path) == ("4f1c", 16000)
    # what the bridge receives once FreeSWITCH fills the variables in
    filled = (
        meta.replace("${uuid}", "4f1c")
        .replace("${voiceos_rate}", "8")
        .replace("${caller_id_number}", "5551234")
        .replace("${voiceos_called}", "100")
    )
    parsed = parse_metadata(filled)
    assert (parsed.call_id, parsed.rate, parsed.mix, parsed.caller) == (
        "4f1c",
        8000,
        "mono",
        "5551234",
    )


def test_numbers_starting_16_stream_wideband_and_humans_get_the_transcript() -> None:
    wide = _actions("voiceos-inbound")
    assert ("set", "voiceos_rate=16") in wide and ("set", "voiceos_rate=8") in wide
    root = ET.parse(ROOT / "dialplan/freeswitch/voiceos_agent.xml").getroot()
    humans = next(c for c in root.iter("context") if c.get("name") == "voiceos-humans")
    targets = [c.get("expression") for c in humans.iter("condition")]
    assert f"^{Settings().human_extension}$" in targets
    assert any("${voiceos_transcript}" in d for _, d in _actions("voiceos-humans"))
    socket = _actions("voiceos-socket")
    assert ("socket", "127.0.0.1:9094 async full") in socket


def test_a_call_the_bridge_does_not_keep_goes_to_a_person() -> None:
    actions = _actions("voiceos-agent")
    datas = [d for _, d in actions]
    watchdog = next(i for i, d in enumerate(datas) if "sched_api(" in d)
    stream = next(i for i, d in enumerate(datas) if "uuid_audio_stream(${uuid} start" in d)
    assert watchdog < stream  # scheduled before the stream can fail
    m = re.search(
        r"sched_api\(\+(\d+) (\S+) uuid_transfer \$\{uuid\} (\S+) (\S+) (\S+)\)", datas[watchdog]
    )
    assert m, datas[watchdog]
    assert int(m.group(1)) == round(Settings().freeswitch_watchdog_s)
    # the group the bridge takes over and cancels, and the extension it names
    assert m.group(2).replace("${uuid}", "abc") == fallback_group("abc", 1)
    assert (m.group(3), m.group(4), m.group(5)) == FALLBACK
    root = ET.parse(ROOT / "dialplan/freeswitch/voiceos_agent.xml").getroot()
    agent_ctx = next(c for c in root.iter("context") if c.get("name") == "voiceos-agent")
    fallback = next(e for e in agent_ctx.iter("extension") if e.get("name") == "voiceos_fallback")
    steps = [(a.get("application"), a.get("data", "")) for a in fallback.iter("action")]
    assert ("transfer", f"{Settings().human_extension} XML voiceos-humans") == steps[-1]
    assert any("sched_del(voiceos-fallback-${uuid}-0)" in d for _, d in steps)
    assert any("uuid_audio_stream(${uuid} stop)" in d for _, d in steps)
    socket = _actions("voiceos-socket")
    assert socket[-1] == ("transfer", "voiceos_fallback XML voiceos-agent")


def test_only_modules_whose_configuration_ships_are_loaded() -> None:
    modules = ET.parse(ROOT / "freeswitch-conf/autoload_configs/modules.conf.xml").getroot()
    loaded = {m.get("module") for m in modules.iter("load")}
    # mod_db asks for db.conf.xml at load; nothing here needs it
    assert "mod_db" not in loaded and "mod_commands" in loaded  # sched_api, sched_del
