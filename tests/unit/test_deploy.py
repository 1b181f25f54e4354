"""agent.deploy: a number routed to the agent, with its admission limit, in
the cells of its regions only."""

from __future__ import annotations

from pathlib import Path

import pytest

from voiceos_switch import Agent
from voiceos_switch.deploy import plan
from voiceos_switch.errors import ConfigurationError
from voiceos_switch.settings import Settings


def test_the_routes_for_a_number_are_written_for_both_pbxs(tmp_path: Path) -> None:
    agent = Agent(settings=Settings(state_dir=tmp_path / "state"))
    d = agent.deploy(
        "+1 (888) 555-0100", max_concurrent_calls=40, routes_dir=tmp_path / "routes", serve=False
    )
    assert d.phone_number == "+18885550100"
    assert agent.settings.max_calls == 40
    conf = (tmp_path / "routes/voiceos_numbers.conf").read_text()
    # carriers send the number with or without its '+': both reach the agent
    assert "exten => +18885550100,1,Gosub(voiceos-agent,s,1(${EXTEN}))" in conf
    assert "exten => 18885550100,1,Gosub(voiceos-agent,s,1(${EXTEN}))" in conf
    xml = (tmp_path / "routes/voiceos_18885550100.xml").read_text()
    assert 'expression="^\\+?(18885550100)$"' in xml
    assert "voiceos_agent XML voiceos-agent" in xml
    import xml.etree.ElementTree as ET

    ET.fromstring(xml.split("-->", 1)[1])  # well-formed


def test_a_number_that_is_not_e164_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="E.164"):
        plan(Settings(), "shop", "call me maybe", 10)
    with pytest.raises(ConfigurationError, match="at least 1"):
        plan(Settings(), "shop", "+18885550100", 0)


def test_a_cell_outside_the_numbers_regions_refuses_to_serve_it() -> None:
    with pytest.raises(ConfigurationError, match="us-east, eu-west; this cell is in ap-south"):
        plan(Settings(region="ap-south"), "shop", "+18885550100", 10, ["us-east", "eu-west"])
    with pytest.raises(ConfigurationError, match="VOICEOS_REGION is not set"):
        plan(Settings(), "shop", "+18885550100", 10, ["us-east"])
    d = plan(Settings(region="eu-west"), "shop", "+18885550100", 10, ["us-east", "eu-west"])
    assert d.region == "eu-west" and d.regions == ["us-east", "eu-west"]


def test_without_a_managed_asterisk_it_says_to_name_a_routes_dir(tmp_path: Path) -> None:
    agent = Agent(settings=Settings(asterisk_root=tmp_path / "none"))
    with pytest.raises(ConfigurationError, match="routes_dir="):
        agent.deploy("+18885550100", serve=False)
