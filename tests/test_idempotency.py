"""`Idempotency-Key` on POST /bots, DELETE /bots/{platform}/{id} and PUT .../config
(idempotency/): a retried request gets the first answer again instead of a second bot; another
request under a used key is a 422; a key whose request failed in a way worth retrying (422, 429,
5xx) or whose holder crashed is free again. Real PostgreSQL and Redis."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from idempotency import services
from idempotency.models import IdempotencyRecord
from meetings.bot_protocol.channels import meeting_channel
from meetings.lifecycle.statuses import MeetingStatus
from meetings.models import Meeting, MeetingTransition
from tests.factories import make_meeting, make_session, make_token, make_user
from tests.http import answer
from tests.support import subscribe

pytestmark = pytest.mark.django_db

MEET_ID = "abc-defg-hij"
BOT = {"platform": "google_meet", "native_meeting_id": MEET_ID}


def post_bot(client, key: str, body: dict | None = None):
    return client.post("/bots", body or BOT, format="json", HTTP_IDEMPOTENCY_KEY=key)


def client_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_X_API_KEY=make_token(user))
    return client


def age(key: str, **fields) -> None:
    """Test setup: move a record's expiry or lease into the past, as time would."""
    past = timezone.now() - timedelta(seconds=1)
    IdempotencyRecord.objects.filter(key=key).update(**{name: past for name in fields})


# --- Replays --------------------------------------------------------------------------------------
def test_post_bots_retried_with_its_key_replays_the_first_answer_and_creates_no_second_meeting(api_client, api_user):
    first = post_bot(api_client, "retry-1")
    again = post_bot(api_client, "retry-1")

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.content == first.content
    assert again["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert Meeting.objects.filter(user=api_user).count() == 1


def test_the_same_body_in_another_key_order_and_spacing_is_the_same_request(api_client, api_user):
    answer(api_client.post("/bots", '{"platform": "google_meet", "native_meeting_id": "abc-defg-hij"}',
                           content_type="application/json", HTTP_IDEMPOTENCY_KEY="k"), 201)

    again = api_client.post("/bots", '{"native_meeting_id":"abc-defg-hij","platform":"google_meet"}',
                            content_type="application/json", HTTP_IDEMPOTENCY_KEY="k")

    assert (again.status_code, again["Idempotent-Replayed"]) == (201, "true")


def test_delete_retried_with_its_key_replays_the_first_answer_without_stopping_again(api_client, api_user):
    meeting = make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID)
    make_session(meeting)
    first = answer(api_client.delete(f"/bots/google_meet/{MEET_ID}", HTTP_IDEMPOTENCY_KEY="stop-1"), 202)
    transitions = MeetingTransition.objects.filter(meeting=meeting).count()

    again = api_client.delete(f"/bots/google_meet/{MEET_ID}", HTTP_IDEMPOTENCY_KEY="stop-1")

    # Without the key a second stop would say "Meeting already stopping.".
    assert answer(again, 202) == first == {"message": "Stop request accepted and is being processed."}
    assert again["Idempotent-Replayed"] == "true"
    assert MeetingTransition.objects.filter(meeting=meeting).count() == transitions


def test_put_config_retried_with_its_key_sends_the_bot_one_command(api_client, api_user, redis_conn):
    meeting = make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID, data={"language": "en"})
    pubsub = subscribe(redis_conn, meeting_channel(meeting.id))
    url = f"/bots/google_meet/{MEET_ID}/config"

    answer(api_client.put(url, {"language": "de"}, format="json", HTTP_IDEMPOTENCY_KEY="cfg-1"), 202)
    replayed = api_client.put(url, {"language": "de"}, format="json", HTTP_IDEMPOTENCY_KEY="cfg-1")
    answer(api_client.put(url, {"language": "fr"}, format="json", HTTP_IDEMPOTENCY_KEY="cfg-2"), 202)

    assert replayed["Idempotent-Replayed"] == "true"
    languages = []
    while "fr" not in languages:  # the last command is the barrier: everything before it has arrived
        message = pubsub.get_message(timeout=5)
        assert message is not None, languages
        if message["type"] == "message":
            languages.append(json.loads(message["data"])["language"])
    pubsub.close()
    assert languages == ["de", "fr"]


def test_a_deciding_4xx_is_kept_and_replayed(api_client, api_user):
    answer(api_client.delete(f"/bots/google_meet/{MEET_ID}", HTTP_IDEMPOTENCY_KEY="stop-none"), 404)
    make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID)

    again = api_client.delete(f"/bots/google_meet/{MEET_ID}", HTTP_IDEMPOTENCY_KEY="stop-none")

    assert (again.status_code, again["Idempotent-Replayed"]) == (404, "true")
    assert Meeting.objects.get(user=api_user).status == MeetingStatus.ACTIVE


# --- Another request under a used key -------------------------------------------------------------
def test_the_same_key_with_another_body_answers_422_and_creates_nothing(api_client, api_user):
    answer(post_bot(api_client, "k1"), 201)

    body = answer(post_bot(api_client, "k1", {"platform": "zoom", "native_meeting_id": "1234567890"}), 422)

    assert set(body["errors"]) == {"Idempotency-Key"}
    assert "new key" in body["detail"]
    assert Meeting.objects.filter(user=api_user).count() == 1


def test_the_same_key_on_another_endpoint_answers_422(api_client, api_user):
    make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID)
    answer(api_client.put(f"/bots/google_meet/{MEET_ID}/config", {"language": "de"}, format="json",
                          HTTP_IDEMPOTENCY_KEY="k2"), 202)

    answer(api_client.delete(f"/bots/google_meet/{MEET_ID}", HTTP_IDEMPOTENCY_KEY="k2"), 422)

    assert Meeting.objects.get(user=api_user).status == MeetingStatus.ACTIVE


def test_another_users_same_key_is_a_key_of_their_own(api_client, api_user):
    other = make_user()
    mine = answer(post_bot(api_client, "shared-name"), 201)

    theirs = post_bot(client_for(other), "shared-name")

    assert answer(theirs, 201)["id"] != mine["id"]
    assert "Idempotent-Replayed" not in theirs
    assert Meeting.objects.filter(user=other).count() == 1


# --- The key itself -------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["", "x" * 256, "naïve", "tab\there", "new\x7fline", "end\n", " padded", "padded "])
def test_a_key_that_is_not_1_to_255_printable_ascii_characters_inside_answers_400_and_does_nothing(
        api_client, api_user, key):
    body = answer(post_bot(api_client, key), 400)

    assert "Idempotency-Key" in body["detail"]
    assert not Meeting.objects.filter(user=api_user).exists()


@pytest.mark.parametrize("key", ["x", "!", ("a key ~!" * 40)[:255]])
def test_a_key_of_1_to_255_printable_characters_spaces_inside_is_taken(api_client, key):
    answer(post_bot(api_client, key), 201)

    assert post_bot(api_client, key)["Idempotent-Replayed"] == "true"


# --- Answers that free the key ----------------------------------------------------------------------
def test_a_422_frees_the_key_for_the_corrected_request(api_client, api_user):
    answer(post_bot(api_client, "fix-me", {"platform": "google_meet", "native_meeting_id": "nope"}), 422)

    corrected = post_bot(api_client, "fix-me")

    assert answer(corrected, 201)["native_meeting_id"] == MEET_ID
    assert "Idempotent-Replayed" not in corrected


@pytest.fixture
def redis_down(settings):
    """Redis refuses connections until the test calls the function this gives."""
    from common.redis_client import get_redis

    working = settings.REDIS_URL
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    settings.RATE_LIMIT_REDIS_TIMEOUT_SECONDS = 0.1
    get_redis.cache_clear()

    def back() -> None:
        settings.REDIS_URL = working
        get_redis.cache_clear()

    yield back
    get_redis.cache_clear()


def test_a_503_frees_the_key_and_the_retry_does_the_work(api_client, api_user, redis_down):
    meeting = make_meeting(api_user, status=MeetingStatus.ACTIVE, native_meeting_id=MEET_ID, data={"language": "en"})
    url = f"/bots/google_meet/{MEET_ID}/config"
    answer(api_client.put(url, {"language": "de"}, format="json", HTTP_IDEMPOTENCY_KEY="k503"), 503)

    redis_down()  # Redis is back
    retried = api_client.put(url, {"language": "de"}, format="json", HTTP_IDEMPOTENCY_KEY="k503")

    answer(retried, 202)
    assert "Idempotent-Replayed" not in retried
    meeting.refresh_from_db()
    assert meeting.data["language"] == "de"


def test_a_request_refused_by_the_rate_limit_leaves_the_key_unused(api_client, api_user, settings):
    settings.BOT_REQUEST_RATE_LIMIT_BURST = 1
    settings.BOT_REQUEST_RATE_LIMIT_PER_MINUTE = 0.01
    answer(api_client.post("/bots", {"platform": "zoom", "native_meeting_id": "1234567890"}, format="json"), 201)
    answer(post_bot(api_client, "limited"), 429)

    settings.BOT_REQUEST_RATE_LIMIT_BURST = 0  # no limit
    retried = post_bot(api_client, "limited")

    assert answer(retried, 201)["native_meeting_id"] == MEET_ID
    assert "Idempotent-Replayed" not in retried


# --- While the first request runs, and after it crashed ----------------------------------------
def test_while_the_first_request_runs_the_same_key_answers_409_with_retry_after(api_client, api_user):
    # The first request has taken the key and is still working (its claim, as the view takes it).
    services.claim(api_user.pk, "busy", "POST /bots", services.request_hash(BOT))

    response = post_bot(api_client, "busy")

    assert "still being processed" in answer(response, 409)["detail"]
    assert response["Retry-After"] == "1"
    assert not Meeting.objects.filter(user=api_user).exists()


def test_a_crashed_requests_key_is_free_once_its_lease_runs_out(api_client, api_user):
    services.claim(api_user.pk, "crashed", "POST /bots", services.request_hash(BOT))  # then never finished
    age("crashed", lease_until=True)

    retried = post_bot(api_client, "crashed")

    answer(retried, 201)
    assert "Idempotent-Replayed" not in retried
    assert post_bot(api_client, "crashed")["Idempotent-Replayed"] == "true"


def test_a_holder_whose_lease_was_taken_over_does_not_write_its_answer(api_user):
    late = services.claim(api_user.pk, "slow", "POST /bots", services.request_hash(BOT))
    age("slow", lease_until=True)
    services.claim(api_user.pk, "slow", "POST /bots", services.request_hash(BOT))

    services.finish(late, 201, '{"late": true}')

    assert IdempotencyRecord.objects.get(key="slow").state == "running"


# --- Expiry ---------------------------------------------------------------------------------------
def test_after_the_ttl_the_key_may_name_a_new_request(api_client, api_user):
    answer(post_bot(api_client, "old"), 201)
    age("old", expires_at=True)

    answer(post_bot(api_client, "old", {"platform": "zoom", "native_meeting_id": "1234567890"}), 201)

    assert Meeting.objects.filter(user=api_user).count() == 2


def test_the_ttl_setting_sets_how_long_an_answer_is_kept(api_client, settings):
    settings.IDEMPOTENCY_KEY_TTL_SECONDS = 3600
    before = timezone.now()

    answer(post_bot(api_client, "ttl"), 201)

    expires = IdempotencyRecord.objects.get(key="ttl").expires_at
    assert before + timedelta(seconds=3600) <= expires <= timezone.now() + timedelta(seconds=3600)


def test_purge_expired_batch_deletes_at_most_a_batch_of_expired_records_and_says_how_many(api_user):
    for n in range(5):
        services.claim(api_user.pk, f"gone-{n}", "POST /bots", "h")
    services.claim(api_user.pk, "kept", "POST /bots", "h")
    IdempotencyRecord.objects.filter(key__startswith="gone-").update(expires_at=timezone.now() - timedelta(hours=1))

    assert services.purge_expired_batch(3) == 3
    assert services.purge_expired_batch(3) == 2
    assert services.purge_expired_batch(3) == 0
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["kept"]


# --- The schema -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path,method,success", [
    ("/bots", "post", "201"), ("/bots/{platform}/{native_meeting_id}", "delete", "202"),
    ("/bots/{platform}/{native_meeting_id}/config", "put", "202")])
def test_the_three_operations_document_the_header_and_its_answers(client, path, method, success):
    operation = client.get("/openapi.json").json()["paths"][path][method]

    assert "Idempotency-Key" in [p["name"] for p in operation["parameters"] if p["in"] == "header"]
    assert {"400", "409", "422"} <= set(operation["responses"])
    assert "Idempotent-Replayed" in operation["responses"][success]["headers"]
    assert "Retry-After" in operation["responses"]["409"]["headers"]
