"""Test infrastructure: a real PostgreSQL database per session (schema by Alembic), a private Redis db.

The machine's PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) are used when reachable, else the
embedded ones are started under a temporary directory, exactly as `make run` would.
"""

from __future__ import annotations

import io
import logging
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import httpx
    import time_machine
    from fastapi.testclient import TestClient

    from cancelflow.services.after_commit import Send

LOCAL_ADMIN_DB = os.environ.get("CANCELFLOW_TEST_ADMIN_DB", "postgresql://postgres@127.0.0.1:5432/postgres")
LOCAL_REDIS = os.environ.get("CANCELFLOW_TEST_REDIS", "redis://127.0.0.1:6379")
# Under pytest-xdist (`make test` runs two workers) every worker is a session of its own: its own database,
# vhost and Redis db. The workers share the run's id, so their Redis dbs are picked apart, never by chance.
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_RUN_BASE = int(os.environ.get("PYTEST_XDIST_TESTRUNUID", uuid.uuid4().hex)[:8], 16)
RUN_ID = f"{(_RUN_BASE + WORKER) & 0xFFFFFFFF:08x}"
# The session's broker db, and a spare one for a test's stack that must not share it (db 15 is the benchmarks').
REDIS_DB = 1 + (_RUN_BASE + 2 * WORKER) % 14
SPARE_REDIS_DB = 1 + (_RUN_BASE + 2 * WORKER + 1) % 14
TEST_DB = f"cf_test_{RUN_ID}"
OUTPUT_DIR = Path(__file__).resolve().parent.parent / "test-output"


def _reachable() -> bool:
    import psycopg2
    import redis

    try:
        psycopg2.connect(LOCAL_ADMIN_DB, connect_timeout=2).close()
        redis.Redis.from_url(LOCAL_REDIS, socket_connect_timeout=2).ping()
    except Exception:  # any failure means "not usable here": fall back to the embedded servers
        return False
    return True


# CANCELFLOW_TEST_BROKER=amqp runs the session on the local RabbitMQ instead of Redis (`make pytest-rabbitmq`).
TEST_BROKER = os.environ.get("CANCELFLOW_TEST_BROKER", "redis")
LOCAL_AMQP = os.environ.get("CANCELFLOW_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")
AMQP_VHOST = f"cf_test_{RUN_ID}"
AMQP_SKIP_REASON: str | None = None  # set when the amqp run cannot happen here; every test then skips


def _amqp_broker() -> str:
    """A private vhost per run (rabbitmqctl), else the default vhost with cancelflow's queues purged."""
    import shutil
    import socket
    import subprocess
    from urllib.parse import urlsplit

    global AMQP_SKIP_REASON
    parts = urlsplit(LOCAL_AMQP)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=2).close()
    except OSError:
        AMQP_SKIP_REASON = (
            f"RabbitMQ is not listening at {parts.hostname}:{parts.port or 5672}: install it "
            "(`apt-get install rabbitmq-server`) and start it (`rabbitmq-server -detached`)"
        )
        return f"{LOCAL_AMQP}//"
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    user = parts.username or "guest"
    try:
        for argv in (
            ["add_vhost", AMQP_VHOST],
            ["set_permissions", "-p", AMQP_VHOST, user, ".*", ".*", ".*"],
        ):
            subprocess.run([ctl, "-q", *argv], check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        # No rabbitmqctl (a remote or containerised broker): share "/" and start from empty queues.
        _purge_amqp_queues(f"{LOCAL_AMQP}//")
        return f"{LOCAL_AMQP}//"
    return f"{LOCAL_AMQP}/{AMQP_VHOST}"


def _purge_amqp_queues(url: str) -> None:
    from kombu import Connection

    from cancelflow.worker.config import QUEUES

    with Connection(url, connect_timeout=5) as conn:
        channel = conn.channel()
        for queue in QUEUES:
            try:
                channel.queue_purge(queue)
            except Exception:  # a queue not declared yet holds nothing to purge (the channel is closed by it)
                channel = conn.channel()


def _drop_amqp_vhost() -> None:
    import shutil
    import subprocess

    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    if BROKER_URL.endswith(f"/{AMQP_VHOST}"):
        subprocess.run([ctl, "-q", "delete_vhost", AMQP_VHOST], check=False, capture_output=True, timeout=60)


def _bootstrap() -> tuple[str, str, object | None]:
    """Decide the servers before any settings are read, and point CANCELFLOW_* at them."""
    if os.environ.get("CANCELFLOW_EMBEDDED") != "1" and _reachable():
        admin = LOCAL_ADMIN_DB
        broker = f"{LOCAL_REDIS}/{REDIS_DB}"
        embedded = None
    else:
        import tempfile

        from cancelflow.config.embedded import EmbeddedServices

        embedded = EmbeddedServices(Path(tempfile.mkdtemp(prefix="cf-embedded-")))
        admin_url, broker = embedded.start()
        admin = admin_url
    if TEST_BROKER == "amqp":
        broker = _amqp_broker()
    base, _, query = admin.partition("?")
    database_url = base.rsplit("/", 1)[0] + f"/{TEST_DB}" + (f"?{query}" if query else "")
    os.environ["CANCELFLOW_DATABASE_URL"] = database_url
    os.environ["CANCELFLOW_BROKER_URL"] = broker
    os.environ["CANCELFLOW_EMBEDDED"] = "0"
    os.environ.setdefault("CANCELFLOW_LOG_JSON", "false")
    # Short timers, the same in this process and in every process a test starts.
    for name, value in {
        "SWEEP_INTERVAL": "1",
        "REDELIVERY_GRACE": "4",
        "RETRY_BACKOFF_BASE": "0.2",
        "RETRY_BACKOFF_MAX": "2",
        "HTTP_TIMEOUT": "5",
        # The tests' receivers and sandboxes listen on loopback ports chosen at run time.
        "OUTBOUND_ALLOW": "127.0.0.1",
        # Shopify's REST call limit (40 calls, 2/s) would pace every module that calls /admin/api/ with one
        # token; tests/api/test_shopify_limits.py runs with Shopify's own figures.
        "SHOPIFY_REST_BUCKET_SIZE": "100000",
    }.items():
        os.environ.setdefault(f"CANCELFLOW_{name}", value)
    return admin, broker, embedded


ADMIN_URL, BROKER_URL, _EMBEDDED = _bootstrap()
DATABASE_URL = os.environ["CANCELFLOW_DATABASE_URL"]


def _admin_execute(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(ADMIN_URL)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@pytest.fixture(scope="session", autouse=True)
def database() -> Iterator[str]:
    """A fresh database for this run, migrated by Alembic, dropped at the end."""
    from cancelflow.db import get_engine, migrate

    _admin_execute(f'DROP DATABASE IF EXISTS "{TEST_DB}"')
    _admin_execute(f'CREATE DATABASE "{TEST_DB}"')
    migrate(DATABASE_URL)
    yield DATABASE_URL
    get_engine.cache_clear()
    _admin_execute(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)')
    if _EMBEDDED is not None:
        _EMBEDDED.stop()  # type: ignore[attr-defined]
    if TEST_BROKER == "amqp":
        _drop_amqp_vhost()


@pytest.fixture(scope="module", autouse=True)
def no_subscription_outlives_its_module(database: str) -> Iterator[None]:
    """Webhook subscriptions a module left active are deactivated when it ends, and the steps it left
    pending are cancelled.

    An active subscription makes every later transition write deliveries (to a receiver that is gone): later
    modules would count rows, statements and latencies that are not theirs. A pending step would be sent by
    the next module's sweeper (at once when that module's broker starts empty) to that module's worker,
    which would run, or refuse as forged, work that is not its own.
    """
    yield
    from sqlalchemy import update

    from cancelflow.db import transaction
    from cancelflow.models import WebhookSubscription, WorkflowStep
    from cancelflow.models.enums import StepStatus

    with transaction() as db:
        db.execute(update(WebhookSubscription).where(WebhookSubscription.is_active).values(is_active=False))
        db.execute(
            update(WorkflowStep)
            .where(WorkflowStep.status == StepStatus.pending)
            .values(status=StepStatus.cancelled)
        )


@pytest.fixture(scope="module", autouse=True)
def no_token_outlives_its_module(database: str) -> Iterator[None]:
    """API tokens a module made through `tests.factories.api_token` are revoked when it ends.

    Tokens are global state: a later module must not be able to authenticate with one of ours.
    """
    yield
    from tests.factories import made_tokens

    if not made_tokens:
        return
    from sqlalchemy import func, update

    from cancelflow.db import transaction
    from cancelflow.models import ApiToken

    with transaction() as db:
        db.execute(
            update(ApiToken)
            .where(ApiToken.id.in_(made_tokens), ApiToken.revoked_at.is_(None))
            .values(revoked_at=func.now())
        )
    made_tokens.clear()


@pytest.fixture(scope="module")
def client(database: str) -> Iterator[TestClient]:
    """The API in-process for the module; the logging `create_app` configures is put back after."""
    from fastapi.testclient import TestClient

    from cancelflow.api.app import create_app

    with restored_logging(), TestClient(create_app()) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def served_url(database: str) -> Iterator[str]:
    """The API served by uvicorn on a loopback port for the module (real sockets, unlike `client`): its
    base URL; the logging `create_app` configures is put back after."""
    from cancelflow.api.app import create_app
    from tests.harness import serving

    with restored_logging(), serving(create_app()) as address:
        yield f"http://{address}"


@pytest.fixture
def http(served_url: str) -> Iterator[httpx.Client]:
    """An HTTP client of `served_url`."""
    import httpx

    with httpx.Client(base_url=served_url, timeout=30) as http_client:
        yield http_client


@pytest.fixture
def frozen() -> Iterator[time_machine.Coordinates]:
    """The clock stopped at now for the test; `frozen.shift(seconds)` moves it (a client's wait)."""
    import time

    import time_machine

    with time_machine.travel(time.time(), tick=False) as clock:
        yield clock


@pytest.fixture(scope="module")
def staff(database: str) -> dict[str, str]:
    """Headers of a plain staff token (no extra permissions), made for the module."""
    from tests.factories import token_headers

    return token_headers("staff")


@pytest.fixture
def sent(database: str) -> Iterator[list[Send]]:
    """Every after-commit send of the test, kept here instead of going to the broker."""
    from tests.factories import captured_sender

    yield from captured_sender()


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The handler `configure_logging` installs, writing to a buffer instead of stderr."""
    import structlog

    from cancelflow.config.logging import configure_logging
    from cancelflow.config.settings import Settings

    config = structlog.get_config()
    with restored_logging():
        configure_logging(Settings(log_json=True, log_level="INFO"))
        ours = logging.getLogger().handlers[0]
        assert isinstance(ours, logging.StreamHandler)
        buffer = io.StringIO()
        ours.setStream(buffer)
        try:
            yield buffer
        finally:
            structlog.configure(**config)


@contextmanager
def restored_logging() -> Iterator[None]:
    """Put the root logger's handlers and level back as they were (the app configures them onto stderr)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.fixture
def session(database: str) -> Iterator[object]:
    """A session inside an outer transaction that is rolled back: nothing a unit test writes stays."""
    from sqlalchemy.orm import Session

    from cancelflow.db import get_engine

    connection = get_engine().connect()
    outer = connection.begin()
    db = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield db
    finally:
        db.close()
        outer.rollback()
        connection.close()


@pytest.fixture
def output_dir(request: pytest.FixtureRequest) -> Path:
    path = OUTPUT_DIR / request.node.name.replace("/", "_").replace("[", "_").replace("]", "")
    path.mkdir(parents=True, exist_ok=True)
    return path


# The schemathesis tests live in these files, every test in them marked schema_fuzz (checked below).
SCHEMA_FUZZ_FILES = "test_schemathesis*.py"


def _deselects_schema_fuzz(config: pytest.Config) -> bool:
    return str(config.getoption("markexpr", "")).split() == ["not", "schema_fuzz"]


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # schemathesis builds a test per API operation while collecting: seconds of each xdist worker's time in
    # `make test`'s first pytest, which deselects them all (`-m "not schema_fuzz"`).
    if _deselects_schema_fuzz(config) and collection_path.match(SCHEMA_FUZZ_FILES):
        return True
    return None


def _operation_ids(items: list[pytest.Item]) -> None:
    """Each schemathesis test's id names its operation, as its name does: `...::test_x[GET /api/v1/...]`.

    pytest 9 builds a test's id from the function's name and its parametrization, and schemathesis puts the
    operation in the name only: every operation's test had the same id, and pytest-xdist, which hands tests
    out by id, ran one of them.
    """
    from _pytest.nodeid import NodeId

    for item in items:
        if item.get_closest_marker("schema_fuzz") is not None and item.parent is not None:
            own = f"{item.parent.nodeid}::{item.name}"
            if item.nodeid != own:
                item._id = NodeId.parse(own)  # type: ignore[attr-defined]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _operation_ids(items)
    shared = [nodeid for nodeid, n in Counter(item.nodeid for item in items).items() if n > 1]
    if shared:  # pytest-xdist hands tests out by id: it would run one test of each such id
        raise pytest.UsageError(f"tests with the same id: {shared}")
    unmarked = [
        item.nodeid
        for item in items
        if item.path.match(SCHEMA_FUZZ_FILES) and item.get_closest_marker("schema_fuzz") is None
    ]
    # A run that deselects schema_fuzz does not even collect these files: it would never run such a test.
    if unmarked:
        raise pytest.UsageError(f"tests in {SCHEMA_FUZZ_FILES} files must be marked schema_fuzz: {unmarked}")
    if AMQP_SKIP_REASON is not None:
        for item in items:
            item.add_marker(pytest.mark.skip(reason=AMQP_SKIP_REASON))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """CI (CANCELFLOW_FAIL_ON_SKIP=1) installs everything a test may need, so a skip there is a failure."""
    if os.environ.get("CANCELFLOW_FAIL_ON_SKIP") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if not skipped:
        return
    lines = [f"CANCELFLOW_FAIL_ON_SKIP=1 and {len(skipped)} test(s) skipped:"]
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        lines.append(f"  {report.nodeid}: {reason}")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_line("\n".join(lines), red=True, bold=True)
    if session.exitstatus == 0:
        session.exitstatus = 1


# The files (scopes) that take longest, longest first, from `--durations` of a full run. xdist hands out the
# other files most tests first, which would leave these few-test files to the end of the run, where one of
# them alone keeps a worker busy for minutes while the other has nothing left to do.
LONG_SCOPES = (
    "tests/chaos",
    "tests/console/test_bulk_browser.py",
    "tests/unit/test_state_machines_stateful.py",
    "tests/test_embedded.py",
    "tests/console/test_browser_work.py",
    "tests/workflow/test_chaining.py",
    "tests/test_cli_config_errors.py",
    "tests/test_embedded_recovery.py",
    "tests/ops/test_api_workers.py",
    "tests/ops/test_make_run_commands.py",
    "tests/ops/test_browser.py",
    "tests/console/test_browser.py",
    "tests/workflow/test_durability.py",
    "tests/unit/test_job_and_delivery_stateful.py",
)


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """`make test` runs two xdist workers: each test file goes whole to one worker (its module-scoped stack
    starts once), and the chaos files go together to one worker, one after the other, so that two fault
    phases never share the machine and measure each other. The longest scopes are handed out first."""
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            if Path(path).match(SCHEMA_FUZZ_FILES):
                return nodeid  # one API operation each, seconds apiece: both workers share a file's
            return "tests/chaos" if path.startswith("tests/chaos/") else path

        def _assign_work_unit(self, node: object) -> None:
            for scope in LONG_SCOPES:
                if scope in self.workqueue:
                    self.workqueue.move_to_end(scope, last=False)
                    break
            super()._assign_work_unit(node)

    return FileScheduling(config, log)


def pytest_unconfigure(config: pytest.Config) -> None:
    # pgserver logs its clean-up from an exit hook, after pytest has closed the streams the test logging wrote
    # to: every such line printed a "--- Logging error ---" traceback at the end of the run.
    import logging

    logging.getLogger("pgserver").disabled = True
