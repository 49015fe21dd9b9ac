"""The cost of the notify path, pinned query by query (zulip style): a change that adds a round
trip to every notification fails here and has to say why.

In production a request is one transaction; under pytest that transaction is a savepoint of the
test's own, which adds a SAVEPOINT and a RELEASE to every count below (``TEST_SAVEPOINT``).
"""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.test.utils import CaptureQueriesContext

from core import events
from core.layer import OUTBOX_GROUP
from core.models import OutboxMessage
from core.outbox import enqueue

pytestmark = pytest.mark.django_db

TEST_SAVEPOINT = 2
# The key (with its address's count of unknown keys), the rate limits (one upsert for every
# window), the outbox row and the savepoint core.outbox.enqueue opens around it and its files.
NOTIFY = 5


@pytest.fixture
def warm(api):
    """The key's last use was recorded a moment ago (that UPDATE runs at most once a minute)."""
    assert api.post("/api/notify", {"text": "warm up"}).status_code == 202
    return api


def statements(context: CaptureQueriesContext) -> list[str]:
    return [query["sql"].split(" ", 1)[0] for query in context.captured_queries]


def test_a_notification_costs_five_queries(warm, django_assert_num_queries):
    with django_assert_num_queries(NOTIFY + TEST_SAVEPOINT) as context:
        assert warm.post("/api/notify", {"text": "epoch 3 done", "metadata": {"loss": 0.1}}).status_code == 202
    assert statements(context)[1:-1] == ["SELECT", "INSERT", "SAVEPOINT", "INSERT", "RELEASE"]
    assert "ON CONFLICT" in context.captured_queries[2]["sql"]  # the limiter: one upsert


def test_an_idempotent_notification_costs_five_more_and_its_replay_three(warm, django_assert_num_queries):
    # + the key's lookup, its claim (in a savepoint, for a concurrent retry) and the stored answer
    with django_assert_num_queries(NOTIFY + 5 + TEST_SAVEPOINT):
        assert warm.post("/api/notify", {"text": "once"}, headers={"Idempotency-Key": "k-1"}).status_code == 202
    with django_assert_num_queries(3 + TEST_SAVEPOINT):  # the key, the earlier answer, the limits
        replay = warm.post("/api/notify", {"text": "once"}, headers={"Idempotency-Key": "k-1"})
    assert replay["Idempotent-Replayed"] == "true"


def test_a_batch_costs_one_insert_and_its_savepoint_per_message(warm, django_assert_num_queries):
    with django_assert_num_queries(2 + 3 * 10 + TEST_SAVEPOINT):  # the key and the limits once
        response = warm.post("/api/notify/batch", {"messages": [{"text": f"m{n}"} for n in range(10)]})
    assert response.json()["queued"] == 10


def test_other_endpoints_check_the_key_and_the_limits_in_two_queries(warm, django_assert_num_queries):
    with django_assert_num_queries(2 + TEST_SAVEPOINT):
        assert warm.get("/api/validate").status_code == 200


def test_a_refused_request_costs_no_more_than_an_accepted_one(warm, django_assert_max_num_queries):
    from tests.notifications.conftest import wait_for_fresh_window

    wait_for_fresh_window(10, need=5)
    while warm.get("/api/validate").status_code == 200:
        pass
    # the key and the upsert, rolled back (a ROLLBACK TO SAVEPOINT under pytest)
    with django_assert_max_num_queries(2 + 1 + TEST_SAVEPOINT):
        assert warm.post("/api/notify", {"text": "too many"}).status_code == 429


@pytest.mark.django_db(transaction=True)
def test_it_rings_the_sender_once_per_request_however_many_rows_it_queues(issued_key):
    """Through the real channel layer (in-memory, or Redis in the PostgreSQL pass): a batch of
    100 rings the outbox group once (it rang 100 times, ~200 ms)."""
    from tests.notifications.conftest import ApiClient

    layer = get_channel_layer()
    client = ApiClient(issued_key[1])

    async def scenario() -> tuple[dict, list[dict]]:
        channel = await layer.new_channel()
        await layer.group_add(OUTBOX_GROUP, channel)
        response = await sync_to_async(client.post)(
            "/api/notify/batch", {"messages": [{"text": f"m{n}"} for n in range(100)]})
        heard = []
        while True:
            try:
                heard.append(await asyncio.wait_for(layer.receive(channel), timeout=1))
            except TimeoutError:
                await layer.group_discard(OUTBOX_GROUP, channel)
                return response.json(), heard

    body, heard = async_to_sync(scenario)()
    assert body["queued"] == 100 and OutboxMessage.objects.count() == 100
    assert heard == [events.outbox_wake()]


def test_it_rings_once_even_when_the_first_row_of_a_transaction_was_rolled_back(
        account, django_capture_on_commit_callbacks):
    from django.db import transaction

    with django_capture_on_commit_callbacks() as callbacks, transaction.atomic():
        try:
            with transaction.atomic():
                enqueue(account, text="dropped")
                raise RuntimeError("this part fails")
        except RuntimeError:
            pass
        enqueue(account, text="kept")
        enqueue(account, text="kept too")
    assert list(OutboxMessage.objects.values_list("text", flat=True)) == ["kept", "kept too"]
    assert [callback.rings for callback in callbacks] == [(OUTBOX_GROUP, events.outbox_wake())]


def test_the_counts_hold_on_this_backend(warm):
    """Guard for the numbers above: the limiter really is a single statement here."""
    with CaptureQueriesContext(connection) as context:
        warm.get("/api/validate")
    assert sum("ratecounter" in q["sql"] for q in context.captured_queries) == 1


def test_the_key_lookup_loads_the_key_its_account_and_the_address_count(issued_key, account):
    """The hand-written lookup (notifications.api.keys) gives what the ORM would."""
    from django.utils import timezone

    from notifications import ratelimit
    from notifications.api.keys import lookup
    from notifications.models import AddressCounter

    window = ratelimit.BAD_KEYS_PER_ADDRESS
    AddressCounter.objects.create(address="192.0.2.1", window=window.name, count=7,
                                  window_start=ratelimit.window_start(timezone.now(), window.seconds))
    key, failures = lookup(issued_key[1], "192.0.2.1")
    fields = [f.attname for f in type(key)._meta.concrete_fields]
    assert [getattr(key, name) for name in fields] == [getattr(issued_key[0], name) for name in fields]
    account_fields = [f.attname for f in type(account)._meta.concrete_fields]
    assert [getattr(key.account, name) for name in account_fields] == [getattr(account, name) for name in account_fields]
    assert failures == 7
    assert lookup(issued_key[1], "192.0.2.2")[1] == 0
    assert lookup("exp_unknown", "192.0.2.1") == (None, 0)
