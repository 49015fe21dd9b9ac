"""Random JSON thrown at an authenticated worker connection never breaks it."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.workers.conftest import auth_frame, communicator
from workers.models import ConnectToken

pytestmark = pytest.mark.django_db(transaction=True)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
frame_types = st.sampled_from(["progress", "result", "ping", "auth", "job", "bogus", ""]) | st.text(max_size=8)
frames = st.one_of(
    json_values,
    st.fixed_dictionaries({"type": frame_types}, optional={
        "job_id": st.one_of(st.uuids().map(str), json_values),
        "progress": json_values,
        "success": json_values,
        "data": json_values,
        "error": json_values,
    }),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sent=st.lists(frames, min_size=1, max_size=6))
def test_it_survives_random_frames(account, sent):
    _, token = ConnectToken.issue(account)

    async def session() -> None:
        comm = communicator()
        await comm.connect()
        await comm.send_json_to(auth_frame(token=token))
        assert (await comm.receive_json_from(timeout=5))["success"]
        for frame in sent:
            await comm.send_to(text_data=json.dumps(frame))
            if isinstance(frame, dict) and frame.get("type") == "ping":
                assert await comm.receive_json_from(timeout=5) == {"type": "pong"}
            else:
                reply = await comm.receive_json_from(timeout=5)
                assert reply["type"] in {"error", "result_ack"}, reply
        await comm.send_json_to({"type": "ping"})
        assert await comm.receive_json_from(timeout=5) == {"type": "pong"}
        await comm.disconnect()

    asyncio.run(session())


# Hostile text (issue 11): lone surrogates, huge integers and deep nesting, before and after auth.

surrogates = st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
hostile_strings = st.one_of(st.text(max_size=8), surrogates, st.just("\x00"), surrogates.map(lambda s: "a" + s + "b"))
HUGE_INT = "__huge_int__"
DEEP = "__deep__"
hostile_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), hostile_strings, st.just(HUGE_INT), st.just(DEEP),
)
hostile_values = st.recursive(
    hostile_leaves,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(hostile_strings, children, max_size=3),
    max_leaves=8,
)


@st.composite
def hostile_text(draw, types: st.SearchStrategy[str]) -> str:
    """A frame's text with raw or escaped surrogates, integers of thousands of digits and
    lists nested from 65 to 5,000 deep wherever the value tree has a placeholder."""
    frame = {"type": draw(types)}
    frame.update(draw(st.dictionaries(
        st.sampled_from(["job_id", "progress", "status", "message", "success", "data", "error", "machine",
                         "token", "credential", "running_jobs"]) | hostile_strings,
        hostile_values, max_size=4)))
    text = json.dumps(frame, ensure_ascii=draw(st.booleans()))  # escaped (\ud800) or raw surrogates
    digits, depth = draw(st.integers(65, 6000)), draw(st.integers(65, 5000))
    sign = draw(st.sampled_from(["", "-"]))
    text = text.replace(f'"{HUGE_INT}"', sign + "7" * digits).replace(f'"{DEEP}"', "[" * depth + "]" * depth)
    return text


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sent=st.lists(hostile_text(st.sampled_from(["progress", "result", "ping", "auth"]) | hostile_strings),
                     min_size=1, max_size=4))
def test_it_answers_hostile_frames_after_auth_with_protocol_errors(account, sent):
    _, token = ConnectToken.issue(account)

    async def session() -> None:
        comm = communicator()
        await comm.connect()
        await comm.send_json_to(auth_frame(token=token))
        assert (await comm.receive_json_from(timeout=5))["success"]
        for text in sent:
            await comm.send_to(text_data=text)
            reply = await comm.receive_json_from(timeout=5)
            assert reply["type"] in {"error", "pong", "result_ack"}, reply
            assert reply.get("code") != "internal", (text[:200], reply)
        await comm.send_json_to({"type": "ping"})
        assert await comm.receive_json_from(timeout=5) == {"type": "pong"}
        await comm.disconnect()

    asyncio.run(session())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=hostile_text(st.sampled_from(["auth", "ping", "progress"]) | hostile_strings),
       with_token=st.booleans())
def test_it_answers_a_hostile_first_frame_and_closes_at_once(account, text, with_token):
    """Before auth: either the auth succeeds (invalid Unicode is repaired, not refused) or the
    socket gets one clear answer and closes at once, never the auth timeout."""
    _, token = ConnectToken.issue(account)
    if with_token and text.startswith('{"type": "auth"'):
        text = text.replace('{"type": "auth"', f'{{"type": "auth", "token": "{token}"', 1)

    async def session() -> None:
        from workers.consumers import throttle

        throttle._failures.clear()
        comm = communicator()
        await comm.connect()
        await comm.send_to(text_data=text)
        reply = await comm.receive_json_from(timeout=5)
        assert reply.get("code") != "internal", (text[:200], reply)
        if reply.get("success") is True:
            await comm.send_json_to({"type": "ping"})
            # a frame without a worker version is told to update first
            while (frame := await comm.receive_json_from(timeout=5))["type"] == "update":
                pass
            assert frame == {"type": "pong"}
            await comm.disconnect()
            return
        assert reply["type"] in {"error", "auth_response"}, reply
        closed = await comm.receive_output(timeout=3)
        assert closed["type"] == "websocket.close", closed
        # The socket is gone, as a real client's would be: without this the consumer is left
        # to asyncio.run's shutdown, cancelled mid-wait on the Redis layer (a stall per example).
        await comm.disconnect()

    asyncio.run(session())
