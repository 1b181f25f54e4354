"""``agent.deploy(phone_number=...)``: route a number to the agent and serve it.

A deployment is one cell's view: this bridge (and the PBX it serves) takes
calls to ``phone_number``, at most ``max_concurrent_calls`` at once (over
that the bridge refuses at once and the PBX tries the next bridge). The PBX
routing for the number is rendered for Asterisk (an extension in the
carrier context, ``voiceos_numbers.conf``, included by the shipped
``extensions.conf``) and FreeSWITCH (an XML extension); for the managed
Asterisk it is installed and the dialplan reloaded.

``regions`` names where whole cells (Kamailio pair, PBXs, bridges) run for
this number; each cell says where it is with ``VOICEOS_REGION``. A cell
outside the list refuses to deploy, so one program deployed everywhere
serves each number only where it should. Placing cells and steering
carriers to them (DNS, the carrier's trunk groups) is outside the bridge:
docs/scaling.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import quoteattr

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .settings import Settings

E164 = re.compile(r"^\+?[1-9]\d{6,14}$")
NUMBERS_FILE = "voiceos_numbers.conf"


@dataclass
class Deployment:
    phone_number: str
    max_concurrent_calls: int
    regions: list[str] = field(default_factory=list)
    region: str | None = None
    asterisk: str = ""
    freeswitch: str = ""
    written: list[Path] = field(default_factory=list)


def check_number(number: str) -> str:
    digits = re.sub(r"[\s().-]", "", number)
    if not E164.match(digits):
        raise ConfigurationError(
            f"{number!r} is not a phone number in E.164 form (like +18885550100)"
        )
    return digits


def asterisk_routes(number: str, agent: str) -> str:
    """Extensions for the carrier context: the number with and without its
    '+' (carriers send either), each to the voiceos_agent Gosub."""
    bare = number.lstrip("+")
    lines = [
        f"; voiceos-switch: {number} to the agent {agent!r} (rendered by agent.deploy)",
    ]
    for exten in dict.fromkeys((f"+{bare}", bare)):
        lines += [
            f"exten => {exten},1,Gosub(voiceos-agent,s,1(${{EXTEN}}))",
            ' same => n,GotoIf($["${GOSUB_RETVAL}" != ""]?voiceos-humans,${GOSUB_RETVAL},1)',
            " same => n,Hangup()",
        ]
    return "\n".join(lines) + "\n"


def freeswitch_routes(number: str, agent: str) -> str:
    bare = number.lstrip("+")
    name = quoteattr(f"voiceos_{bare}")
    return (
        f"<!-- voiceos-switch: {number} to the agent {agent} (rendered by agent.deploy) -->\n"
        "<include>\n"
        '  <context name="voiceos-inbound">\n'
        f"    <extension name={name}>\n"
        f'      <condition field="destination_number" expression="^\\+?({bare})$">\n'
        '        <action application="set" data="voiceos_called=+$1"/>\n'
        '        <action application="set" data="voiceos_rate=8"/>\n'
        '        <action application="transfer" data="voiceos_agent XML voiceos-agent"/>\n'
        "      </condition>\n"
        "    </extension>\n"
        "  </context>\n"
        "</include>\n"
    )


def plan(
    settings: Settings,
    agent: str,
    phone_number: str,
    max_concurrent_calls: int,
    regions: list[str] | None = None,
) -> Deployment:
    """What deploying means for this cell, without doing it."""
    number = check_number(phone_number)
    if max_concurrent_calls < 1:
        raise ConfigurationError("max_concurrent_calls must be at least 1")
    wanted = [r.strip() for r in (regions or []) if r.strip()]
    if wanted and settings.region not in wanted:
        where = settings.region or "no region (VOICEOS_REGION is not set)"
        raise ConfigurationError(
            f"{number} is deployed to {', '.join(wanted)}; this cell is in {where}. "
            "Set VOICEOS_REGION to this cell's region, or deploy it where the number is served."
        )
    return Deployment(
        phone_number=number,
        max_concurrent_calls=max_concurrent_calls,
        regions=wanted,
        region=settings.region,
        asterisk=asterisk_routes(number, agent),
        freeswitch=freeswitch_routes(number, agent),
    )


def install(deployment: Deployment, settings: Settings, routes_dir: Path | None = None) -> None:
    """Write the routing: into ``routes_dir`` (for a PBX run elsewhere), or
    into the managed Asterisk's configuration, reloading its dialplan."""
    if routes_dir is not None:
        routes_dir.mkdir(parents=True, exist_ok=True)
        for name, text in (
            (NUMBERS_FILE, deployment.asterisk),
            (f"voiceos_{deployment.phone_number.lstrip('+')}.xml", deployment.freeswitch),
        ):
            path = routes_dir / name
            path.write_text(text)
            deployment.written.append(path)
        return
    from .pbx.asterisk import AsteriskSandbox

    sandbox = AsteriskSandbox(settings)
    if not sandbox.installed:
        raise ConfigurationError(
            "no managed Asterisk here: pass routes_dir= to write the routing for your PBX "
            "(voiceos_numbers.conf for Asterisk, an XML extension for FreeSWITCH)"
        )
    path = sandbox.install_numbers(deployment.asterisk)
    deployment.written.append(path)
