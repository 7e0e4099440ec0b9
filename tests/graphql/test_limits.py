"""The GraphQL cost bucket in the test Redis: points taken and given back, refused when short, restored with
time (moved by time-machine, never slept), and never over-admitted by concurrent threads or processes."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid

import pytest
import time_machine

from cancelflow.config import get_settings
from cancelflow.graphql import limits
from cancelflow.graphql.limits import ThrottleStatus, admit, settle
from cancelflow.services.buckets import Bucket, Buckets, get_buckets
from cancelflow.services.throttle import storage_uri
from tests.conftest import LOCAL_REDIS, SPARE_REDIS_DB
from tests.harness import free_port


@pytest.fixture
def token() -> str:
    return f"token-{uuid.uuid4().hex}"


def _shared_redis() -> str:
    """The store the API uses here; on a RabbitMQ run (memory://), the local Redis instead."""
    uri = storage_uri(get_settings())
    return uri if uri.startswith("redis") else f"{LOCAL_REDIS}/{SPARE_REDIS_DB}"


def test_the_bucket_lives_in_the_login_throttles_store() -> None:
    uri = storage_uri(get_settings())
    # the broker's Redis (memory:// only when the broker is not Redis and no throttle URL is set)
    assert uri == get_settings().broker_url or get_settings().broker_url.startswith("amqp")  # type: ignore[union-attr]
    assert (get_buckets()._script is not None) == uri.startswith("redis")


def test_admit_takes_the_requested_points_and_settle_gives_back_the_unused(
    token: str, frozen: time_machine.Coordinates
) -> None:
    admitted, status = admit(token, 101)
    assert admitted
    assert status == ThrottleStatus(maximum_available=1000.0, currently_available=899, restore_rate=50.0)
    assert settle(token, 101, 46).currently_available == 954  # Shopify's documented example
    assert settle(token, 5, 5).currently_available == 954


def test_a_query_that_does_not_fit_is_refused_and_takes_nothing(
    token: str, frozen: time_machine.Coordinates
) -> None:
    assert admit(token, 800)[0]
    admitted, status = admit(token, 300)
    assert not admitted
    assert status.currently_available == 200
    assert status.seconds_until(300) == pytest.approx(2.0)
    assert admit(token, 200) == (True, ThrottleStatus(1000.0, 0, 50.0))


def test_points_are_restored_at_the_restore_rate(token: str, frozen: time_machine.Coordinates) -> None:
    assert admit(token, 1000)[0]
    assert not admit(token, 1)[0]
    frozen.shift(0.5)  # 25 points back
    assert admit(token, 26)[1].currently_available == 25
    assert admit(token, 25) == (True, ThrottleStatus(1000.0, 0, 50.0))
    frozen.shift(60)  # never more than the bucket holds
    assert admit(token, 0)[1].currently_available == 1000


def test_a_clock_behind_the_stored_time_restores_nothing(
    token: str, frozen: time_machine.Coordinates
) -> None:
    # Given one replica's clock a little ahead of another's
    assert admit(token, 500, now=time.time() + 5)[0]
    # Then the one behind neither gains points nor loses them
    assert admit(token, 0, now=time.time())[1].currently_available == 500


def test_the_sizes_are_settings(
    token: str, frozen: time_machine.Coordinates, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_settings(), "graphql_bucket_size", 2000)
    monkeypatch.setattr(get_settings(), "graphql_restore_rate", 100.0)
    assert admit(token, 1500) == (True, ThrottleStatus(2000.0, 500, 100.0))
    frozen.shift(1)
    assert admit(token, 0)[1].currently_available == 600


def test_concurrent_threads_never_take_more_than_the_bucket(
    token: str, frozen: time_machine.Coordinates
) -> None:
    results: list[bool] = []
    barrier = threading.Barrier(16)

    def one() -> None:
        barrier.wait()
        for _ in range(5):
            results.append(admit(token, 30)[0])

    threads = [threading.Thread(target=one) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1000 // 30  # 33 of the 80 fit, whichever thread asked
    assert admit(token, 0)[1].currently_available == 1000 - 33 * 30


def _admit_in_a_process(uri: str, key: str, now: float, tries: int, out: multiprocessing.Queue[int]) -> None:
    buckets = Buckets.from_uri(uri)
    spec = Bucket("graphql", 1000.0, 50.0)
    out.put(sum(buckets.take(spec, key, 7, now=now).admitted for _ in range(tries)))


def test_concurrent_processes_share_one_bucket(token: str) -> None:
    # Given four API processes (each with its own connection) asking at the same instant
    context = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[int] = context.Queue()
    now = time.time()
    uri = _shared_redis()
    processes = [
        context.Process(target=_admit_in_a_process, args=(uri, f"graphql-test:{token}", now, 60, out))
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    admitted = sum(out.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    # Then 240 asks of 7 points fill the 1,000-point bucket exactly once: 142 admitted
    assert admitted == 1000 // 7


def test_an_unreachable_redis_still_limits_in_memory(frozen: time_machine.Coordinates) -> None:
    buckets = Buckets.from_uri(f"redis://127.0.0.1:{free_port()}/0")
    spec = Bucket("graphql", 100.0, 10.0)
    assert [buckets.take(spec, "t", 40).admitted for _ in range(3)] == [True, True, False]
    frozen.shift(2)
    assert buckets.take(spec, "t", 40).admitted


def test_without_redis_the_bucket_is_kept_in_memory(frozen: time_machine.Coordinates) -> None:
    # a RabbitMQ broker and no CANCELFLOW_THROTTLE_URL: storage_uri says memory://
    buckets = Buckets.from_uri("memory://")
    spec = Bucket("rest", 40.0, 2.0)
    assert sum(buckets.take(spec, "t", 1).admitted for _ in range(50)) == 40
    assert buckets.refund(spec, "t", 100).level == 0


def test_the_cost_extension_is_shopifys_shape(token: str) -> None:
    status = ThrottleStatus(1000.0, 954, 50.0)
    assert limits.cost_extension(101, 46, status) == {
        "requestedQueryCost": 101,
        "actualQueryCost": 46,
        "throttleStatus": {"maximumAvailable": 1000.0, "currentlyAvailable": 954, "restoreRate": 50.0},
    }
    error = limits.max_cost_error(2003)
    assert error.extensions == {
        "code": "MAX_COST_EXCEEDED",
        "cost": 2003,
        "maxCost": 1000,
        "documentation": "https://shopify.dev/api/usage/limits#rate-limits",
    }
    assert error.message.startswith(
        "Query cost is 2003, which exceeds the single query max cost limit (1000)."
    )
    assert limits.throttled_error().extensions == {
        "code": "THROTTLED",
        "documentation": "https://shopify.dev/api/usage/rate-limits",
    }
