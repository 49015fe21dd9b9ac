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
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
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
