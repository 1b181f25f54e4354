"""AMI control against a small AMI speaker on loopback: login, drops, backoff."""

from __future__ import annotations

import asyncio
import logging

import pytest

from voiceos_switch.control.ami import AMIController, AMIError, one_line


class FakeAMI:
    """Speaks enough AMI: banner, Login, Ping, Setvar; can drop everyone."""

    def __init__(self, secret: str = "s3cret") -> None:
        self.secret = secret
        self.writers: list[asyncio.StreamWriter] = []
        self.actions: list[dict[str, str]] = []
        self.logins = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        self.drop()
        await self.server.wait_closed()

    def drop(self) -> None:
        for w in self.writers:
            w.close()
        self.writers.clear()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        writer.write(b"Asterisk Call Manager/11.0.0\r\n")
        try:
            while True:
                block = await reader.readuntil(b"\r\n\r\n")
                msg = dict(
                    line.split(": ", 1)
                    for line in block.decode().strip().split("\r\n")
                    if ": " in line
                )
                self.actions.append(msg)
                aid = msg.get("ActionID", "")
                if msg.get("Action") == "Login":
                    self.logins += 1
                    ok = msg.get("Secret") == self.secret
                    status = "Success" if ok else "Error"
                    text = "Authentication accepted" if ok else "Authentication failed"
                    writer.write(
                        f"Response: {status}\r\nActionID: {aid}\r\nMessage: {text}\r\n\r\n".encode()
                    )
                elif msg.get("Action") == "Setvar" and msg.get("Channel") == "nope":
                    writer.write(
                        f"Response: Error\r\nActionID: {aid}\r\nMessage: No such channel\r\n\r\n".encode()
                    )
                else:
                    writer.write(f"Response: Success\r\nActionID: {aid}\r\n\r\n".encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass


def user_event(call_id: str, channel: str) -> bytes:
    return (
        f"Event: UserEvent\r\nUserEvent: VoiceosCall\r\nChannel: {channel}\r\n"
        f"Uniqueid: 1.1\r\nCallID: {call_id}\r\nCaller: 555\r\nCalled: 100\r\nRate: 16000\r\n\r\n"
    ).encode()


async def test_connects_maps_calls_and_reconnects_with_backoff_after_a_drop() -> None:
    ami = FakeAMI()
    await ami.start()
    ctl = AMIController(port=ami.port, secret="s3cret", backoff_initial=0.05, backoff_max=0.4)
    ctl.start()
    assert await ctl.wait_ready(5)
    ami.writers[0].write(user_event("abc", "PJSIP/carrier-0001"))
    await asyncio.sleep(0.1)
    info = await ctl.channel_for("abc")
    assert (info.channel, info.caller, info.called, info.rate) == (
        "PJSIP/carrier-0001",
        "555",
        "100",
        16000,
    )
    await ctl.set_var("abc", "VOICEOS_TRANSCRIPT", "agent: hi\ncaller: hello")
    setvar = [a for a in ami.actions if a.get("Action") == "Setvar"][-1]
    assert (
        setvar["Value"] == "agent: hi / caller: hello" and setvar["Channel"] == "PJSIP/carrier-0001"
    )

    # the PBX goes away for a while: the controller keeps retrying, slower each time
    port = ami.port
    await ami.stop()
    await asyncio.sleep(0.05)
    assert not ctl.connected
    with pytest.raises(AMIError, match="not connected"):
        await ctl.action({"Action": "Ping"}, timeout=0.2)
    await asyncio.sleep(1.0)
    ami2 = FakeAMI()
    await ami2.start(port)
    assert await ctl.wait_ready(5)
    assert ctl.connects == 2
    await ctl.close()
    await ami2.stop()


async def test_wrong_secret_is_one_clear_error_not_a_tight_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ami = FakeAMI(secret="right")
    await ami.start()
    ctl = AMIController(port=ami.port, secret="wrong", backoff_initial=0.2, backoff_max=5)
    with caplog.at_level(logging.ERROR, logger="voiceos_switch"):
        ctl.start()
        assert not await ctl.wait_ready(1.0)
    assert ctl.login_failures >= 1
    assert ami.logins <= 3  # backoff: 0.2, 0.4 ... not hundreds
    assert any(
        "ami_login_failed" in r.getMessage() and "VOICEOS_AMI_SECRET" in r.getMessage()
        for r in caplog.records
    )
    await ctl.close()
    await ami.stop()


async def test_errors_from_asterisk_are_raised_with_its_message() -> None:
    ami = FakeAMI()
    await ami.start()
    ctl = AMIController(port=ami.port, secret="s3cret")
    ctl.start()
    assert await ctl.wait_ready(5)
    with pytest.raises(AMIError, match="No such channel"):
        await ctl.action({"Action": "Setvar", "Channel": "nope", "Variable": "A", "Value": "1"})
    await ctl.close()
    await ami.stop()


def test_no_secret_is_refused_with_what_to_set() -> None:
    with pytest.raises(AMIError, match="VOICEOS_AMI_SECRET"):
        AMIController(secret=None)


def test_values_are_flattened_to_one_line() -> None:
    assert one_line("a\n\n b \r\nc") == "a / b / c"
