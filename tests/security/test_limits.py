"""Every caller-sized input and every background job is bounded: refused with the documented status and
body, and nothing is written (no tag, no link, no job row).

The limits are settings; each test lowers the one it exercises on the process's settings object (the API
under test runs in this process), so the refusal is reached with a handful of rows.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from cancelflow.config import get_settings
from cancelflow.db import transaction
from cancelflow.errors import Invalid
from cancelflow.models import BulkJob, ExportJob, Tag
from cancelflow.services import bulk
from tests.api.test_tags import make_requests, tagged_ids, tags_in_db, unique
from tests.factories import token_headers

BASE = "/api/v1/cancellation_requests/"


@pytest.fixture
def auth(database: str) -> dict[str, str]:
    """A fresh staff token per test: job counts per token start at zero."""
    return token_headers("staff")


@pytest.fixture
def limit(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Set a limit on the settings the in-process API reads, for this test only."""

    def set_limit(name: str, value: object) -> None:
        assert hasattr(get_settings(), name), name
        monkeypatch.setattr(get_settings(), name, value)

    return set_limit


def tags_named(*keys: str) -> int:
    with transaction() as session:
        return int(session.scalar(select(func.count()).select_from(Tag).where(Tag.key.in_(keys))) or 0)


def jobs(model: type[BulkJob] | type[ExportJob], token_header: dict[str, str]) -> int:
    """Jobs recorded for the token behind `token_header`."""
    from cancelflow.services.tokens import authenticate

    with transaction() as session:
        token = authenticate(session, token_header["Authorization"].split()[1])
        assert token is not None
        return int(
            session.scalar(
                select(func.count())
                .select_from(model)
                .where(model.params["token_id"].as_integer() == token.id)
            )
            or 0
        )


class TestKeysPerCall:
    @pytest.mark.parametrize("path", ["add_tags/", "remove_tags/"])
    def test_more_keys_than_allowed_is_400_and_writes_nothing(
        self, client: TestClient, auth: dict[str, str], limit: Any, path: str
    ) -> None:
        limit("tag_keys_per_call", 3)
        (rid,) = make_requests(1)
        keys = [unique() for _ in range(4)]
        response = client.post(f"{BASE}{rid}/{path}", headers=auth, json={"keys": keys})
        assert response.status_code == 400, response.text
        assert response.json() == {
            "keys": ["Ensure this field has no more than 3 elements."],
            "code": "max_length",
        }
        assert tags_in_db(rid) == []
        assert tags_named(*keys) == 0
        # At the limit it is accepted.
        assert client.post(f"{BASE}{rid}/{path}", headers=auth, json={"keys": keys[:3]}).status_code == 204

    def test_duplicates_count_once(self, client: TestClient, auth: dict[str, str], limit: Any) -> None:
        limit("tag_keys_per_call", 2)
        (rid,) = make_requests(1)
        key = unique()
        response = client.post(f"{BASE}{rid}/add_tags/", headers=auth, json={"keys": [key, key, key]})
        assert response.status_code == 204, response.text

    @pytest.mark.parametrize("path", ["bulk_add_tags/", "bulk_remove_tags/"])
    def test_bulk_calls_are_bounded_too(
        self, client: TestClient, auth: dict[str, str], limit: Any, path: str
    ) -> None:
        limit("tag_keys_per_call", 2)
        ids = make_requests(2)
        keys = [unique() for _ in range(3)]
        response = client.post(f"{BASE}{path}", headers=auth, json={"objects": ids, "keys": keys})
        assert response.status_code == 400, response.text
        assert response.json() == {
            "keys": ["Ensure this field has no more than 2 elements."],
            "code": "max_length",
        }
        assert tags_named(*keys) == 0

    def test_filter_by_tags_is_bounded_too(
        self, client: TestClient, auth: dict[str, str], limit: Any
    ) -> None:
        limit("tag_keys_per_call", 2)
        response = client.get(
            f"{BASE}filter_by_tags/", headers=auth, params=[("key", "a"), ("key", "b"), ("key", "c")]
        )
        assert response.status_code == 400, response.text
        assert response.json() == {
            "key": ["Ensure this field has no more than 2 elements."],
            "code": "max_length",
        }

    def test_key_length_is_a_setting(self, client: TestClient, auth: dict[str, str], limit: Any) -> None:
        limit("tag_key_max_length", 8)
        (rid,) = make_requests(1)
        response = client.post(f"{BASE}{rid}/add_tags/", headers=auth, json={"keys": ["ok", "123456789"]})
        assert response.status_code == 400, response.text
        assert response.json() == {
            "keys": ["Ensure this field has no more than 8 characters."],
            "code": "max_length",
        }
        assert tags_in_db(rid) == []

    def test_a_100_000_key_call_is_refused_with_the_defaults(
        self, client: TestClient, auth: dict[str, str]
    ) -> None:
        (rid,) = make_requests(1)
        keys = [f"k{i}" for i in range(100_000)]
        response = client.post(f"{BASE}{rid}/add_tags/", headers=auth, json={"keys": keys})
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "max_length"
        assert tags_in_db(rid) == []


class TestTagsPerRequest:
    def test_an_add_past_the_cap_is_400_and_writes_nothing(
        self, client: TestClient, auth: dict[str, str], limit: Any
    ) -> None:
        limit("tags_per_request", 3)
        (rid,) = make_requests(1)
        first = [unique() for _ in range(2)]
        assert client.post(f"{BASE}{rid}/add_tags/", headers=auth, json={"keys": first}).status_code == 204
        more = [unique(), unique()]
        response = client.post(f"{BASE}{rid}/add_tags/", headers=auth, json={"keys": more})
        assert response.status_code == 400, response.text
        assert response.json() == {
            "keys": [f"A cancellation request may carry at most 3 tags; request {rid} would have more."],
            "code": "too_many_tags",
        }
        assert tags_in_db(rid) == sorted(first)
        assert tags_named(*more) == 0
        # Keys it already has do not count twice: re-adding them with one new key fits.
        response = client.post(f"{BASE}{rid}/add_tags/", headers=auth, json={"keys": [*first, more[0]]})
        assert response.status_code == 204, response.text
        assert tags_in_db(rid) == sorted([*first, more[0]])

    def test_a_synchronous_bulk_add_past_the_cap_tags_no_request(
        self, client: TestClient, auth: dict[str, str], limit: Any
    ) -> None:
        limit("tags_per_request", 2)
        ids = make_requests(3)
        full = unique()
        client.post(f"{BASE}{ids[1]}/add_tags/", headers=auth, json={"keys": [full]})
        keys = [unique(), unique()]
        response = client.post(f"{BASE}bulk_add_tags/", headers=auth, json={"objects": ids, "keys": keys})
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "too_many_tags"
        assert str(ids[1]) in response.json()["keys"][0]
        assert tagged_ids(keys[0]) == set()
        assert tagged_ids(keys[1]) == set()

    def test_a_bulk_job_past_the_cap_is_refused_before_it_is_stored(
        self, client: TestClient, auth: dict[str, str], limit: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        limit("tags_per_request", 1)
        monkeypatch.setattr(bulk, "SYNC_MAX_IDS", 1)  # two ids make a job
        ids = make_requests(2)
        client.post(f"{BASE}{ids[0]}/add_tags/", headers=auth, json={"keys": [unique()]})
        key = unique()
        response = client.post(f"{BASE}bulk_add_tags/", headers=auth, json={"objects": ids, "keys": [key]})
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "too_many_tags"
        assert jobs(BulkJob, auth) == 0
        assert tags_named(key) == 0


class TestRowsPerBulkJob:
    @pytest.mark.parametrize("path", ["bulk_add_tags/", "bulk_remove_tags/"])
    def test_more_ids_than_allowed_is_400_and_writes_nothing(
        self, client: TestClient, auth: dict[str, str], limit: Any, path: str
    ) -> None:
        limit("bulk_max_ids", 3)
        ids = make_requests(4)
        key = unique()
        response = client.post(f"{BASE}{path}", headers=auth, json={"objects": ids, "keys": [key]})
        assert response.status_code == 400, response.text
        assert response.json() == {
            "objects": ["Ensure this field has no more than 3 elements."],
            "code": "max_length",
        }
        assert tagged_ids(key) == set()
        assert tags_named(key) == 0
        assert jobs(BulkJob, auth) == 0

    def test_ids_are_counted_as_sent(self, client: TestClient, auth: dict[str, str], limit: Any) -> None:
        limit("bulk_max_ids", 3)
        (rid,) = make_requests(1)
        response = client.post(
            f"{BASE}bulk_add_tags/", headers=auth, json={"objects": [rid] * 4, "keys": ["x"]}
        )
        assert response.status_code == 400, response.text

    def test_a_filter_job_matching_too_many_requests_is_refused(self, limit: Any) -> None:
        limit("bulk_max_rows", 2)
        email = f"{unique('rows')}@example.com"
        make_requests(3, email=email)
        key = unique()
        with pytest.raises(Invalid) as refused, transaction() as session:
            bulk.create_job(session, "add", [key], filters={"email": email})
        assert refused.value.code == "too_many_rows"
        assert "at most 2" in refused.value.message
        assert tags_named(key) == 0
        with transaction() as session:
            stored = session.scalar(
                select(func.count()).select_from(BulkJob).where(BulkJob.params["keys"].contains([key]))
            )
        assert stored == 0

    def test_the_cli_says_so_and_exits_nonzero(self, limit: Any) -> None:
        from typer.testing import CliRunner

        from cancelflow.cli.main import app

        limit("bulk_max_rows", 1)
        email = f"{unique('cli')}@example.com"
        make_requests(2, email=email)
        key = unique()
        result = CliRunner().invoke(app, ["tags", "bulk-add", key, "--filter", f"email={email}", "--no-wait"])
        assert result.exit_code == 1
        assert result.exception is None or isinstance(result.exception, SystemExit)  # an answer, not a crash
        assert "too_many_rows" in result.output
        assert tags_named(key) == 0


class TestJobsPerToken:
    def test_bulk_jobs_beyond_the_limit_are_429_with_retry_after(
        self, client: TestClient, auth: dict[str, str], limit: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        limit("bulk_jobs_per_token", 2)
        monkeypatch.setattr(bulk, "SYNC_MAX_IDS", 1)  # two ids make a job; no worker here: jobs stay pending
        ids = make_requests(2)
        for _ in range(2):
            accepted = client.post(
                f"{BASE}bulk_add_tags/", headers=auth, json={"objects": ids, "keys": [unique()]}
            )
            assert accepted.status_code == 202, accepted.text
        key = unique()
        response = client.post(f"{BASE}bulk_add_tags/", headers=auth, json={"objects": ids, "keys": [key]})
        assert response.status_code == 429, response.text
        assert response.headers["Retry-After"].isdigit()
        body = response.json()
        assert body["code"] == "too_many_jobs"
        assert "at most 2" in body["detail"]
        assert jobs(BulkJob, auth) == 2
        assert tags_named(key) == 0
        # Another token is not affected; a finished job frees its slot.
        other = token_headers("staff")
        accepted = client.post(
            f"{BASE}bulk_remove_tags/", headers=other, json={"objects": ids, "keys": [key]}
        )
        assert accepted.status_code == 202, accepted.text
        with transaction() as session:
            session.execute(
                text(
                    "UPDATE bulk_jobs SET status = 'done' WHERE id = (SELECT id FROM bulk_jobs "
                    "WHERE (params->>'token_id')::bigint = :t LIMIT 1)"
                ),
                {"t": _token_id(auth)},
            )
        again = client.post(f"{BASE}bulk_add_tags/", headers=auth, json={"objects": ids, "keys": [key]})
        assert again.status_code == 202, again.text

    def test_export_jobs_beyond_the_limit_are_429_with_retry_after(
        self, client: TestClient, auth: dict[str, str], limit: Any
    ) -> None:
        limit("export_jobs_per_token", 2)
        limit("export_sync_max_rows", 0)  # every export is a job; no worker runs here, so they stay pending
        email = f"{unique('exp')}@example.com"
        make_requests(1, email=email)
        params = {"export_format": "csv", "email": email}
        for _ in range(2):
            accepted = client.get(f"{BASE}detailed/", headers=auth, params=params)
            assert accepted.status_code == 202, accepted.text
        response = client.get(f"{BASE}detailed/", headers=auth, params=params)
        assert response.status_code == 429, response.text
        assert response.headers["Retry-After"].isdigit()
        assert response.json()["code"] == "too_many_jobs"
        assert jobs(ExportJob, auth) == 2

    def test_concurrent_requests_cannot_both_take_the_last_slot(
        self, auth: dict[str, str], limit: Any
    ) -> None:
        """The count and the insert happen under the token's advisory lock."""
        from concurrent.futures import ThreadPoolExecutor

        from cancelflow.errors import TooManyJobs
        from cancelflow.models import ExportFormat
        from cancelflow.services import exports

        limit("export_jobs_per_token", 1)
        token_id = _token_id(auth)

        def start() -> str:
            try:
                with transaction() as session:
                    exports.create_job(session, ExportFormat.csv, filters={}, token_id=token_id)
                    session.execute(text("SELECT pg_sleep(0.2)"))  # hold the transaction open a moment
                return "created"
            except TooManyJobs:
                return "refused"

        with ThreadPoolExecutor(4) as pool:
            outcomes = sorted(pool.map(lambda _: start(), range(4)))
        assert outcomes == ["created", "refused", "refused", "refused"]
        assert jobs(ExportJob, auth) == 1


def _token_id(token_header: dict[str, str]) -> int:
    from cancelflow.services.tokens import authenticate

    with transaction() as session:
        token = authenticate(session, token_header["Authorization"].split()[1])
        assert token is not None
        return int(token.id)
