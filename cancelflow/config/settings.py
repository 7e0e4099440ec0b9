"""All configuration, read from the environment (prefix CANCELFLOW_) through one cached object."""

from __future__ import annotations

import functools
import os
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cancelflow.config.allowlist import AllowRule, parse_allow_list
from cancelflow.errors import ConfigurationError

if TYPE_CHECKING:
    from cancelflow.config.stack import StackState


def _seconds(value: object) -> object:
    """Durations in the environment may be plain seconds ("2.5") or ISO 8601 ("PT2.5S")."""
    if isinstance(value, str):
        try:
            return timedelta(seconds=float(value))
        except ValueError:
            return value
    return value


Duration = Annotated[timedelta, BeforeValidator(_seconds)]


def _rate(value: str) -> str:
    """A rate in limits' notation ("10 per 15 minutes", "60/minute"), checked when settings load."""
    from limits import parse

    parse(value)
    return value


def usable_cores() -> int:
    """The cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def default_api_workers() -> int:
    """One API process per core, at most four: one process tops out at one core (the GIL), and four keep
    the connection budget (README "Configuration") well inside PostgreSQL's default 100."""
    return min(4, usable_cores())


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CANCELFLOW_", env_file=".env", extra="ignore")

    # Where the data lives. Unset database/broker URLs mean the embedded default under data_dir.
    database_url: str | None = None
    broker_url: str | None = None
    embedded: bool = False
    data_dir: Path = Path(".cancelflow")

    # HTTP
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # Scheme, host and port (and path prefix) clients reach the API at: absolute links (`next`, job and
    # export URLs) are built from it, never from the request's Host. Unset: links are relative.
    public_base_url: str | None = None
    # Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (comma-separated addresses
    # or networks, `*` for any); empty: none, the peer address is the client.
    forwarded_allow_ips: str = ""

    # API processes (uvicorn workers) `cancelflow run` starts. Each serves requests on its own core; state
    # they share lives in PostgreSQL and Redis (sessions, throttles, metrics).
    api_workers: int = Field(default_factory=default_api_workers, ge=1, le=64)
    # Database connections of each process: `db_pool_size` kept open, `db_max_overflow` more opened for a
    # moment when all are busy. An API process runs at most `db_pool_size` requests' database work at once
    # (its thread pool has that many threads), so its connections stay open instead of being opened and
    # closed per request; the overflow covers the few requests that use a second connection.
    db_pool_size: int = Field(default=16, ge=1, le=1000)
    db_max_overflow: int = Field(default=4, ge=0, le=1000)

    # Console sessions end after this many seconds without a request (default 8 hours).
    console_session_idle: int = Field(default=8 * 3600, ge=60)

    # Login throttling (limits' notation, e.g. "10 per 15 minutes"). Attempts per username are counted
    # until a login succeeds; attempts per client address are all counted. Over either: 429.
    login_limit_per_username: Annotated[str, AfterValidator(_rate)] = "10 per 15 minutes"
    login_limit_per_address: Annotated[str, AfterValidator(_rate)] = "60 per minute"
    # Password checks run at once per API process (each costs ~50 ms of a core); more wait their turn.
    login_concurrency: int = Field(default_factory=lambda: max(1, (os.cpu_count() or 2) // 2), ge=1)
    # Where the counters live: a limits storage URI (redis://, rediss://, redis+unix://, memory://).
    # Unset: the broker when it is Redis, else this process's memory.
    throttle_url: str | None = None

    # Shopify's API rate limits, kept in the throttle store above (README "Rate limits"). REST under
    # /admin/api/: a leaky bucket of `shopify_rest_bucket_size` calls per token, draining
    # `shopify_rest_leak_rate` calls per second. GraphQL: a bucket of `graphql_bucket_size` cost points per
    # token, restoring `graphql_restore_rate` points per second; one query may cost at most
    # `graphql_max_cost`, nest fields at most `graphql_max_depth` deep and select at most
    # `graphql_max_fields` fields (fragments expanded).
    shopify_rest_bucket_size: int = Field(default=40, ge=1)
    shopify_rest_leak_rate: float = Field(default=2.0, gt=0)
    graphql_bucket_size: int = Field(default=1000, ge=1)
    graphql_restore_rate: float = Field(default=50.0, gt=0)
    graphql_max_cost: int = Field(default=1000, ge=1)
    graphql_max_depth: int = Field(default=20, ge=2)
    graphql_max_fields: int = Field(default=1000, ge=10)

    # Flower. Loopback by default: it has basic auth only, with no lockout (put it behind a proxy to expose it).
    flower_address: str = "127.0.0.1"
    flower_port: int = 5555
    flower_user: str = "admin"
    flower_password: SecretStr | None = None
    flower_max_tasks: int = 10_000
    # Task events (task-received, -started, -succeeded) from the worker from its start. Off by default, as in
    # Celery: a monitor turns them on when it watches (Flower sends `enable_events` every 5 s), so a worker
    # nobody watches does not publish three events per task. On for monitors that only listen.
    worker_task_events: bool = False

    # Workflow
    approval_rule: Literal["auto", "manual"] = "auto"
    sweep_interval: Duration = timedelta(seconds=10)
    # A pending step whose message has not been consumed after this long is assumed lost and re-sent.
    redelivery_grace: Duration = timedelta(seconds=120)
    step_max_attempts: int = 8
    retry_backoff_base: Duration = timedelta(seconds=2)
    retry_backoff_max: Duration = timedelta(minutes=10)
    # A task that finishes its step goes on to run the successor steps it made in-process (each in its own
    # transaction) when they are due now and on a queue this worker consumes, at most this many per task
    # execution (0 turns chaining off: every successor is published) and not past this long after the task
    # started; the rest are published as before.
    chain_max_steps: int = Field(default=8, ge=0)
    chain_max_seconds: Duration = timedelta(seconds=5)
    # Longest countdown ever handed to the broker; longer waits are database timers swept by beat.
    max_countdown: Duration = timedelta(seconds=60)
    visibility_timeout: Duration = timedelta(hours=1)
    # Messages a worker holds per pool process (Celery's prefetch multiplier), acknowledged late all the same.
    # 1 by default: with 4, steps whose messages the worker held when Redis restarted empty waited out the
    # redelivery grace instead of being re-sent at once (DESIGN-NOTES, "Prefetch back to 1").
    worker_prefetch_multiplier: int = Field(default=1, ge=1)
    http_timeout: Duration = timedelta(seconds=10)
    # Webhook and fulfillment-service callback URLs reach only public addresses, plus these entries
    # (comma-separated addresses, networks, host names, each with an optional :port).
    outbound_allow: Annotated[tuple[AllowRule, ...], NoDecode, BeforeValidator(parse_allow_list)] = ()
    webhook_max_subscriptions_per_channel: int = 10
    # A subscription whose receiver failed this many attempts in a row (no 2xx in between) is paused
    # until staff resume it, as Shopify and Stripe stop endpoints that keep failing.
    webhook_pause_after: int = Field(default=20, ge=1)

    # Connectors: "module:Class" import paths, so a real gateway plugs in by configuration.
    payment_connector: str = "cancelflow.integrations.payments:HttpPaymentGateway"
    bank_connector: str = "cancelflow.integrations.bank:HttpBankTransfer"
    notifier_connector: str = "cancelflow.integrations.fulfillment:HttpNotifier"
    # Unset: the sandbox gateway `make run` starts, on `sandbox_gateway_port`.
    payment_gateway_url: str = ""
    payment_gateway_key: SecretStr = SecretStr("sandbox")

    # Sandbox services started by `make run`
    sandbox_fulfillment_port: int = 8101
    sandbox_gateway_port: int = 8102

    # Exports of the detailed request list: up to this many rows stream in the response; more become an
    # export job whose file is downloaded when done.
    export_sync_max_rows: int = 10_000

    # Limits: every caller-sized input and every background job is bounded (README "Limits").
    # Request bodies: without valid credentials a body may not exceed body_max_bytes_unauthenticated (checked
    # from Content-Length before anything is read, and while reading a body without one); with them,
    # body_max_bytes.
    body_max_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    body_max_bytes_unauthenticated: int = Field(default=64 * 1024, ge=1024)
    # Tags: keys named in one call (add_tags, remove_tags, bulk_*_tags, filter_by_tags), the length of a
    # key (at most the column's 100), and the distinct keys one cancellation request may carry.
    tag_keys_per_call: int = Field(default=50, ge=1)
    tag_key_max_length: int = Field(default=100, ge=1, le=100)
    tags_per_request: int = Field(default=100, ge=1)
    # Bulk tagging: ids in one bulk call, and requests a filter-selected bulk job may match.
    bulk_max_ids: int = Field(default=10_000, ge=1)
    bulk_max_rows: int = Field(default=5_000_000, ge=1)
    # Export and bulk-tag jobs a token may have queued or running at once (beyond: 429).
    export_jobs_per_token: int = Field(default=2, ge=1)
    bulk_jobs_per_token: int = Field(default=2, ge=1)
    # Files of finished export jobs are deleted this long after the job finished (the job reads `expired`).
    export_retention: Duration = timedelta(days=7)
    # Refused storefront messages (`rejected_messages`, read by `cancelflow submit`) are kept this long.
    rejected_message_retention: Duration = timedelta(days=30)
    # PostgreSQL statement_timeout of every export and bulk-tag statement (each cursor fetch, each chunk).
    job_statement_timeout: Duration = timedelta(minutes=2)

    # Shop identity echoed in fulfillment-order payloads
    shop_id: int = 1
    # The shop's name (GraphQL Admin `shop { name }`)
    shop_name: str = "cancelflow"

    # Prometheus: when set, the worker's main process serves its pool's task histograms on this port
    # (prometheus_client multiprocess mode; PROMETHEUS_MULTIPROC_DIR if set, else a fresh temporary
    # directory). The API serves its own gauges at /metrics.
    worker_metrics_port: int | None = None

    log_level: str = "INFO"
    log_json: bool = True

    @model_validator(mode="after")
    def _gateway_follows_the_sandbox(self) -> Settings:
        if not self.payment_gateway_url:
            self.payment_gateway_url = f"http://127.0.0.1:{self.sandbox_gateway_port}"
        return self

    @property
    def wants_embedded(self) -> bool:
        return self.embedded or self.database_url is None or self.broker_url is None

    def require_database_url(self) -> str:
        """The configured database, else the one of the `cancelflow run` using this data dir."""
        if self.database_url is not None:
            return self.database_url
        return self._running_stack("CANCELFLOW_DATABASE_URL").database_url

    def require_broker_url(self) -> str:
        """The configured broker, else the one of the `cancelflow run` using this data dir."""
        if self.broker_url is not None:
            return self.broker_url
        return self._running_stack("CANCELFLOW_BROKER_URL").broker_url

    def _running_stack(self, variable: str) -> StackState:
        from cancelflow.config import stack

        state = stack.read_running(self.data_dir)
        checkout = stack.checkout_root()
        if state is None and "data_dir" not in self.model_fields_set and checkout is not None:
            # The default data dir is relative to where a command runs; `make run` keeps its own in the
            # checkout, so a command started elsewhere (its full path typed) finds that stack too.
            state = stack.read_running(checkout / self.data_dir)
        if state is None:
            where = self.data_dir.expanduser().absolute()
            raise ConfigurationError(
                f"{variable} is not set and no `cancelflow run` (`make run`) is running with its data in "
                f"{where}: start one there, run this command from its directory, or set {variable}"
            )
        return state


@functools.cache
def get_settings() -> Settings:
    return Settings()
