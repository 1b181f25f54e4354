"""A bridge in its own process for tests: ``voiceos-switch serve --agent
tests.bridge_process:agent`` runs the scripted agent (the recogniser knows
the test clips, the model says REPLIES), configured by VOICEOS_* variables
like any bridge."""

from __future__ import annotations

import asyncio

from tests.unit.test_emotion_calls import REPLIES, clips, scripted_agent
from voiceos_switch.settings import Settings

agent, _ = scripted_agent(Settings(), asyncio.run(clips()), REPLIES)
