"""All configuration, read from the environment (prefix CANCELFLOW_) through one cached object."""

from __future__ import annotations

import functools
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cancelflow.config.allowlist import AllowRule, parse_allow_list


def _seconds(value: Any) -> Any:
    """Durations in the environment may be plain seconds ("2.5") or ISO 8601 ("PT2.5S")."""
    if isinstance(value, str):
        try:
            return timedelta(seconds=float(value))
        except ValueError:
            return value
    return value


Duration = Annotated[timedelta, BeforeValidator(_seconds)]


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
    public_base_url: str | None = None

    # Flower. Loopback by default: it has basic auth only, with no lockout (put it behind a proxy to expose it).
    flower_address: str = "127.0.0.1"
    flower_port: int = 5555
    flower_user: str = "admin"
    flower_password: SecretStr | None = None
    flower_max_tasks: int = 10_000

    # Workflow
    approval_rule: Literal["auto", "manual"] = "auto"
    sweep_interval: Duration = timedelta(seconds=10)
    # A pending step whose message has not been consumed after this long is assumed lost and re-sent.
    redelivery_grace: Duration = timedelta(seconds=120)
    step_max_attempts: int = 8
    retry_backoff_base: Duration = timedelta(seconds=2)
    retry_backoff_max: Duration = timedelta(minutes=10)
    # Longest countdown ever handed to the broker; longer waits are database timers swept by beat.
    max_countdown: Duration = timedelta(seconds=60)
    visibility_timeout: Duration = timedelta(hours=1)
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
    payment_gateway_url: str = "http://127.0.0.1:8102"
    payment_gateway_key: SecretStr = SecretStr("sandbox")

    # Sandbox services started by `make run`
    sandbox_fulfillment_port: int = 8101
    sandbox_gateway_port: int = 8102

    # Exports of the detailed request list: up to this many rows stream in the response; more become an
    # export job whose file is downloaded when done.
    export_sync_max_rows: int = 10_000

    # Shop identity echoed in fulfillment-order payloads
    shop_id: int = 1

    # Prometheus: when set, the worker's main process serves its pool's task histograms on this port
    # (prometheus_client multiprocess mode; PROMETHEUS_MULTIPROC_DIR if set, else a fresh temporary
    # directory). The API serves its own gauges at /metrics.
    worker_metrics_port: int | None = None

    log_level: str = "INFO"
    log_json: bool = True

    @property
    def wants_embedded(self) -> bool:
        return self.embedded or self.database_url is None or self.broker_url is None

    def require_database_url(self) -> str:
        if self.database_url is None:
            raise RuntimeError(
                "CANCELFLOW_DATABASE_URL is not set; start through `cancelflow run` for the embedded default"
            )
        return self.database_url

    def require_broker_url(self) -> str:
        if self.broker_url is None:
            raise RuntimeError(
                "CANCELFLOW_BROKER_URL is not set; start through `cancelflow run` for the embedded default"
            )
        return self.broker_url


@functools.cache
def get_settings() -> Settings:
    return Settings()
