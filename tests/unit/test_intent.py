"""What the caller asks for in words: a person above all, and never when
they say they do not want one."""

from __future__ import annotations

import pytest

from voiceos_switch.conversation.intent import intent_of

ASKS_FOR_A_PERSON = [
    "Can I talk to a person, please?",
    "can I talk to a person please",
    "I want to speak to a human.",
    "Representative.",
    "Operator, please.",
    "Just get me a real person!",
    "Transfer me to an agent.",
    "Put me through to customer service.",
    "I need a manager.",
    # what the recogniser makes of a caller who runs on into the request
    "Tell me about everything you sell Can I talk to a person, please?",
]
ASKS_FOR_NOTHING = [
    "I don't need to talk to anyone, thanks.",
    "No, I do not want to speak to a person.",
    "What time do you open on Saturday?",
    "Tell me about everything you sell.",
    "Do you have a travel agent section?",
    "The person at the counter was nice.",
    "",
    "um",
]


@pytest.mark.parametrize("text", ASKS_FOR_A_PERSON)
def test_a_request_for_a_person_is_heard(text: str) -> None:
    assert intent_of(text) == "escalate"


@pytest.mark.parametrize("text", ASKS_FOR_NOTHING)
def test_no_request_is_read_into_other_words(text: str) -> None:
    assert intent_of(text) is None


def test_the_other_requests() -> None:
    assert intent_of("Please cancel my order.") == "cancel"
    assert intent_of("This is ridiculous.") == "complaint"
    assert intent_of("Okay, goodbye.") == "goodbye"
