"""API at scale: 1,000,000 cancellation requests; list latency, bulk tagging, CSV export.

Generates the data set-based (generate_series) in a throw-away database, starts the real API under
uvicorn and measures over HTTP with httpx (one client, sequential requests, after a warm-up):

* p50 / p95 of the list with no filter, with each of status, plan status, order number, email, tag
  (`filter_by_tags/`), and of a deep page (`page=50000&limit=10`), both by number (rows skipped in the id
  index) and by following the `next` link (keyset seek); target p95 < 50 ms;
* bulk-tagging 100,000 requests with the `tags.bulk` job machinery (chunked, committed, resumable) against
  a bare `INSERT … SELECT … ON CONFLICT DO NOTHING` of the same rows; target ratio <= 1.5;
* CSV export of all rows (services.exports, the code behind `export_format=csv`) in a child process,
  three rounds alternating with COPY, medians:
  rows/s and that process's peak RSS, against a bare `COPY (same SELECT) TO STDOUT`; targets >= 0.5 of
  COPY and peak RSS < 200 MB.

    .venv/bin/python bench/api.py [--rows 1000000] [--samples 60]

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GENERATE = """
INSERT INTO channels (id, name, channel_type) SELECT c, 'Channel ' || c, 'sales_channel' FROM generate_series(1, 5) c;
INSERT INTO cancellation_reasons (id, subject, cancellation_type, extra_information_needed, "order", is_active)
  VALUES (1, 'Changed my mind', 'cancel', false, 100, true), (2, 'Damaged', 'refund', false, 100, true);
INSERT INTO customers (id, first_name, last_name, email, channel_id)
  SELECT n, 'First' || n, 'Last' || n, 'user' || n || '@example.com', 1 + n % 5
  FROM generate_series(1, :customers) n;
INSERT INTO orders (id, number, channel_id, customer_id, currency, shipping_option_slug, tracking_number,
                    shipping_address)
  SELECT n, 'ORD' || lpad(n::text, 8, '0'), 1 + n % 5, 1 + n % :customers, 'try', 'standard', 'TRK' || n, '{}'
  FROM generate_series(1, :orders) n;
INSERT INTO order_items (id, order_id, sku, product_name, quantity, unit_price, requested_quantity)
  SELECT n, 1 + (n - 1) / 2, 'SKU' || n, 'Product ' || n, 2, 49.90, 1 FROM generate_series(1, :rows) n;
INSERT INTO cancellation_requests (id, uuid, order_item_id, order_id, channel_id, reason_id, description,
    cancellation_type, status, iban, holder_name, quantity, fully_refund_as_loyalty_money, attributes, version,
    created_date, modified_date)
  SELECT n, gen_random_uuid(), n, 1 + (n - 1) / 2, 1 + ((1 + (n - 1) / 2) % 5), 1 + n % 2, NULL,
         (ARRAY['cancel', 'refund'])[1 + n % 2],
         CASE WHEN n > :rows - 2000 THEN (ARRAY['waiting', 'approved', 'approved', 'completed'])[1 + n % 4]
              WHEN n % 50 = 0 THEN 'rejected' WHEN n % 100 = 1 THEN 'waiting' WHEN n % 100 = 2 THEN 'approved'
              WHEN n % 2000 = 7 THEN 'approved' ELSE 'completed' END,
         CASE WHEN n % 3 = 0 THEN 'TR330006100519786457841326' END,
         CASE WHEN n % 3 = 0 THEN 'Holder ' || n END, 1, n % 10 = 0, '{}', 1,
         now() - make_interval(mins => (:rows - n)), now() - make_interval(mins => (:rows - n))
  FROM generate_series(1, :rows) n;
INSERT INTO cancellation_plans (id, request_id, status, plan_type, amount, currency, refund_target, version,
    created_date, modified_date)
  SELECT n, n, CASE WHEN n > :rows - 2000 THEN (ARRAY['waiting', 'confirmed', 'waiting_for_payment',
                                                     'completed'])[1 + n % 4]
                    WHEN n % 50 = 0 THEN 'rejected' WHEN n % 100 = 1 THEN 'waiting' WHEN n % 100 = 2 THEN 'failed'
                    ELSE 'completed' END,
         (ARRAY['cancel', 'refund'])[1 + n % 2], 49.90, 'try',
         (ARRAY['original_payment', 'bank_transfer', 'loyalty_money'])[1 + n % 3], 1,
         now() - make_interval(mins => (:rows - n)), now() - make_interval(mins => (:rows - n)) + interval '2 hours'
  FROM generate_series(1, :rows) n;
INSERT INTO tags (id, key) SELECT t, 'tag' || t FROM generate_series(1, 20) t;
UPDATE cancellation_plans SET status = 'confirmation_waiting', deadline_at = now() - interval '2 days',
    escalated_at = now() - interval '1 day', modified_date = now() - interval '3 days'
  WHERE id % 2000 = 7;
UPDATE cancellation_plans SET status = 'confirmation_waiting', deadline_at = now() + interval '2 days',
    modified_date = now() - make_interval(secs => (:rows - id))
  WHERE id > :rows - 500 AND status IN ('waiting', 'confirmed');
INSERT INTO fulfillment_services (id, handle, name, callback_url, secret, location_id, location_name,
    reply_deadline_seconds, reminder_interval_seconds, reminder_count, deadline_action)
  SELECT s, 'wh' || s, 'Warehouse ' || s, 'http://127.0.0.1:9/fs' || s, 'secret', s, 'Location ' || s,
         86400, 21600, 3, 'escalate' FROM generate_series(1, 3) s;
INSERT INTO fulfillment_orders (id, order_id, fulfillment_service_id, request_status, status, destination,
    origin, cancellation_plan_id, version)
  SELECT p.id, (p.request_id - 1) / 2 + 1, 1 + p.id % 3,
         CASE p.status WHEN 'confirmation_waiting' THEN 'cancellation_requested'
                       WHEN 'completed' THEN 'cancellation_accepted' ELSE 'accepted' END,
         CASE p.status WHEN 'completed' THEN 'cancelled' ELSE 'in_progress' END, '{}', '{}', p.id, 1
  FROM cancellation_plans p;
INSERT INTO fulfillment_order_requests (id, fulfillment_order_id, kind, message, request_options, sent_at,
    response, responded_at, reminders_sent, escalated)
  SELECT p.id, p.id, 'cancellation_request', 'Customer cancelled', '{}', p.modified_date - interval '1 day',
         CASE WHEN p.status = 'confirmation_waiting' THEN NULL ELSE 'accepted' END,
         CASE WHEN p.status = 'confirmation_waiting' THEN NULL ELSE p.modified_date END,
         CASE WHEN p.escalated_at IS NULL THEN 0 ELSE 3 END, p.escalated_at IS NOT NULL
  FROM cancellation_plans p WHERE p.status IN ('confirmation_waiting', 'completed', 'confirmed');
INSERT INTO workflow_steps (request_id, plan_id, kind, status, attempt, max_attempts, next_attempt_at,
    idempotency_key, fulfillment_order_id, last_error, result, finished_at, version, created_date, modified_date)
  SELECT p.request_id, p.id, k.kind,
         CASE WHEN p.status = 'failed' AND k.i = 4 THEN 'dead'
              WHEN p.status IN ('waiting_for_payment', 'confirmed') AND k.i = 4 THEN 'pending'
              WHEN p.status IN ('waiting', 'confirmation_waiting') AND k.i > 2 THEN 'cancelled'
              ELSE 'done' END,
         1, 8, now() + interval '1 hour', p.id || ':' || k.kind || ':1', CASE WHEN k.i = 3 THEN p.id END,
         CASE WHEN p.status = 'failed' AND k.i = 4 THEN 'gateway said no' END, '{}',
         p.modified_date, 1, p.modified_date, p.modified_date
  FROM cancellation_plans p
  CROSS JOIN (VALUES (1, 'validate'), (2, 'route'), (3, 'notify'), (4, 'refund')) AS k(i, kind);
INSERT INTO money_transactions (plan_id, step_id, target, amount, currency, idempotency_key, external_id,
    created_date)
  SELECT s.plan_id, s.id, p.refund_target, p.amount, p.currency, 'money:' || s.id, 'gw-' || s.id, s.modified_date
  FROM workflow_steps s JOIN cancellation_plans p ON p.id = s.plan_id
  WHERE s.kind = 'refund' AND p.status = 'completed';
INSERT INTO events (entity, entity_id, kind, from_status, to_status, data, created_date)
  SELECT 'request', r.id, e.kind, e.from_status, e.to_status, '{}', r.created_date + e.after
  FROM cancellation_requests r
  CROSS JOIN (VALUES ('request.created', NULL, 'waiting', interval '0'),
                     ('request.approved', 'waiting', 'approved', interval '5 minutes'),
                     ('request.completed', 'approved', 'completed', interval '2 hours')) AS e(kind, from_status, to_status, after)
  WHERE e.to_status = 'waiting' OR (e.to_status = 'approved' AND r.status <> 'waiting')
     OR (e.to_status = 'completed' AND r.status = 'completed');
INSERT INTO events (entity, entity_id, kind, from_status, to_status, data, created_date)
  SELECT 'plan', p.id, 'plan.' || p.status, 'waiting', p.status, '{}', p.modified_date FROM cancellation_plans p;
INSERT INTO webhook_subscriptions (id, url, secret, events, is_active)
  VALUES (1, 'http://127.0.0.1:9/hook', 'secret', '["*"]', true);
INSERT INTO webhook_deliveries (subscription_id, event_id, event_type, request_id, payload, status, attempt,
    next_attempt_at, delivered_at, created_date, modified_date)
  SELECT 1, gen_random_uuid(), 'request.' || r.status, r.id, '{}',
         CASE WHEN r.id % 1000 = 3 THEN 'dead' ELSE 'delivered' END, 1, r.modified_date, r.modified_date,
         r.modified_date, r.modified_date
  FROM cancellation_requests r WHERE r.status IN ('completed', 'rejected');
INSERT INTO cancellation_request_tags (request_id, tag_id)
  SELECT n, 1 + n % 20 FROM generate_series(1, :rows) n WHERE n % 5 = 0;
"""


def data_set_name(rows: int) -> str:
    """The kept data set for `rows`: changes whenever the generator or a migration does."""
    digest = hashlib.sha256(GENERATE.encode())
    for path in sorted((ROOT / "migrations").rglob("*.py")):
        digest.update(path.read_bytes())
    return f"cf_bench_data_{rows}_{digest.hexdigest()[:10]}"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def generate(url: str, rows: int) -> None:
    import psycopg2

    conn = psycopg2.connect(url)
    conn.autocommit = True
    params = {"rows": rows, "orders": (rows + 1) // 2, "customers": max(1, rows // 5)}
    with conn.cursor() as cur:
        sql = GENERATE
        for name, value in params.items():
            sql = sql.replace(f":{name}", str(value))
        for statement in filter(str.strip, sql.split(";\n")):
            cur.execute(statement)
        for table in (
            "channels",
            "customers",
            "orders",
            "order_items",
            "cancellation_requests",
            "cancellation_plans",
            "tags",
            "fulfillment_services",
            "fulfillment_orders",
            "fulfillment_order_requests",
            "workflow_steps",
            "money_transactions",
            "events",
            "webhook_subscriptions",
            "webhook_deliveries",
        ):
            cur.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"  # noqa: S608 - fixed table names
            )
        cur.execute("VACUUM ANALYZE")
    conn.close()


def start_api(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    from tests.harness import free_port, wait_for

    port = free_port()
    log = (workdir / "api.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "cancelflow.api.app:create_app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "CANCELFLOW_LOG_JSON": "true"},
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        import httpx

        try:
            return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=60, what="API")
    return proc, base


def time_lists(base: str, key: str, samples: int, rows: int) -> list[tuple[str, float, float, str]]:
    import httpx

    cases_path = "/api/v1/cancellation_requests/"
    cases = {
        "list, no filter": ("/api/v1/cancellation_requests/", {}),
        "list, status=approved": ("/api/v1/cancellation_requests/", {"status": "approved"}),
        "list, plan status=failed": (
            "/api/v1/cancellation_requests/",
            {"cancellation_plan_status": "failed"},
        ),
        "list, order number": ("/api/v1/cancellation_requests/", {"order_number": f"ord{rows // 4 + 1:08d}"}),
        "list, email": ("/api/v1/cancellation_requests/", {"email": "USER4242@example.com"}),
        "list, tag (filter_by_tags)": ("/api/v1/cancellation_requests/filter_by_tags/", {"key": "tag6"}),
        f"list, page={rows // 20} limit=10": (
            "/api/v1/cancellation_requests/",
            {"page": rows // 20, "limit": 10},
        ),
    }
    out = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Token {key}"}, timeout=60) as client:
        # The same deep page reached as clients reach it: the `next` link of the page before (keyset).
        before = client.get(cases_path, params={"page": rows // 20 - 1, "limit": 10}).json()
        link = httpx.URL(before["next"])
        cases[f"list, page={rows // 20} by the next link"] = (link.path, dict(link.params))
        for name, (path, params) in cases.items():
            first = client.get(path, params=params)
            if first.status_code != 200:
                out.append((name, float("nan"), float("nan"), f"HTTP {first.status_code}"))
                continue
            count = first.json().get("count")
            for _ in range(3):
                client.get(path, params=params)
            took = []
            for _ in range(samples):
                start = time.perf_counter()
                response = client.get(path, params=params)
                took.append((time.perf_counter() - start) * 1000)
                assert response.status_code == 200, response.text
            out.append((name, statistics.median(took), pct(took, 0.95), f"count={count}"))
    return out


def _timed(call: Any, samples: int) -> tuple[float, float]:
    for _ in range(3):
        call()
    took = []
    for _ in range(samples):
        start = time.perf_counter()
        call()
        took.append((time.perf_counter() - start) * 1000)
    return statistics.median(took), pct(took, 0.95)


def sweeper_steps() -> list[tuple[str, Any]]:
    """What the beat runs each tick, each as its task does it (one transaction each)."""
    from cancelflow.config import get_settings
    from cancelflow.db import transaction
    from cancelflow.services import escalation, exports, intake, steps, tallies
    from cancelflow.services.clock import now
    from cancelflow.services.webhooks import delivery
    from cancelflow.worker.app import celery_app
    from cancelflow.worker.broker_loss import broker_was_emptied

    settings = get_settings()

    def in_tx(work: Any) -> Any:
        def run() -> None:
            with transaction() as session:
                work(session)

        return run

    return [
        ("broker-loss check", lambda: broker_was_emptied(celery_app)),
        ("workflow.sweep_due", in_tx(steps.sweep_due)),
        # The same task's second transaction: the tally rows written since the last tick, folded.
        ("workflow.sweep_due: tallies.compact", in_tx(tallies.compact)),
        ("fulfillment.chase_replies", in_tx(escalation.chase)),
        ("webhooks.sweep", in_tx(delivery.sweep_due)),
        ("exports.expire", in_tx(lambda s: exports.expire_jobs(s, retention=settings.export_retention))),
        (
            "cancellations.prune_rejections",
            in_tx(
                lambda s: intake.prune_rejections(s, older_than=now() - settings.rejected_message_retention)
            ),
        ),
    ]


def time_history(base: str, samples: int, rows: int) -> list[tuple[str, float, float, str, float]]:
    """(case, p50, p95, note, target) of the figures whose cost must not grow with history."""
    import httpx
    from typer.testing import CliRunner

    from cancelflow.cli.main import app as cli
    from cancelflow.console import web
    from cancelflow.db import transaction
    from cancelflow.services import console_sessions, users

    out: list[tuple[str, float, float, str, float]] = []
    with httpx.Client(base_url=base, timeout=60) as client:

        def metrics() -> None:
            assert client.get("/metrics").status_code == 200

        out.append(("GET /metrics", *_timed(metrics, samples), "", 100.0))

    parts = sweeper_steps()
    total: list[float] = []
    for _ in range(3):
        for _, call in parts:
            call()
    per_part: dict[str, list[float]] = {name: [] for name, _ in parts}
    for _ in range(samples):
        start = time.perf_counter()
        for name, call in parts:
            t0 = time.perf_counter()
            call()
            per_part[name].append((time.perf_counter() - t0) * 1000)
        total.append((time.perf_counter() - start) * 1000)
    out.append(("sweeper pass (all beat tasks)", statistics.median(total), pct(total, 0.95), "", 20.0))
    for name, took in per_part.items():
        out.append((f"  {name}", statistics.median(took), pct(took, 0.95), "", float("nan")))

    from cancelflow.services import escalation

    def escalated() -> None:
        with transaction() as session:
            escalation.escalations(session)

    out.append(("escalation.escalations() (the query)", *_timed(escalated, samples), "", 200.0))
    runner = CliRunner()

    def escalations() -> None:
        result = runner.invoke(cli, ["escalations"])
        assert result.exit_code == 0, result.output

    listed = runner.invoke(cli, ["escalations"]).output.strip().splitlines()[-1:]
    out.append(
        ("cancelflow escalations (in-process)", *_timed(escalations, samples), " ".join(listed)[:40], 200.0)
    )

    password = secrets.token_urlsafe(16)
    with transaction() as session:
        users.create_user(session, username="bench-staff", password=password)
    with transaction() as session:
        key, _ = console_sessions.sign_in(session, "bench-staff", password, client="bench")
    day = 86400 // 60  # requests are one minute apart (GENERATE)
    from datetime import UTC, datetime, timedelta

    today = datetime.now(UTC).date()
    cases: dict[str, tuple[str, dict[str, str]]] = {
        "console list, no filter": ("/console/requests", {}),
        "console list, status tab=approved": ("/console/requests", {"status": "approved"}),
        "console list, tag": ("/console/requests", {"tag": "tag6"}),
        "console list, plan status=failed": ("/console/requests", {"cancellation_plan_status": "failed"}),
        "console list, type=refund": ("/console/requests", {"cancellation_type": "refund"}),
        "console list, escalated=true": ("/console/requests", {"escalated": "true"}),
        "console list, escalated=false": ("/console/requests", {"escalated": "false"}),
        "console list, order number": ("/console/requests", {"order_number": f"ord{rows // 4 + 1:08d}"}),
        "console list, e-mail": (
            "/console/requests",
            {"order__customer__email__iexact": "USER4242@example.com"},
        ),
        "console list, SKU": ("/console/requests", {"sku": f"sku{rows // 3}"}),
        "console list, channel": ("/console/requests", {"channel": "3"}),
        "console list, reason": ("/console/requests", {"reason": "2"}),
        "console list, created from": (
            "/console/requests",
            {"created_date__date__gte": str(today - timedelta(days=2))},
        ),
        "console list, created until": (
            "/console/requests",
            {"created_date__date__lte": str(today - timedelta(days=rows // day // 2))},
        ),
        "console list, modified from": (
            "/console/requests",
            {"modified_date__date__gte": str(today - timedelta(days=2))},
        ),
        "console list, modified until": (
            "/console/requests",
            {"modified_date__date__lte": str(today - timedelta(days=rows // day // 2))},
        ),
        "console request page (completed)": (f"/console/requests/{rows // 2 + 3}", {}),
        "console request page (escalated)": (f"/console/requests/{(rows // 4000) * 2000 + 7}", {}),
        "console overview": ("/console/overview", {}),
    }
    with httpx.Client(base_url=base, timeout=60, cookies={web.COOKIE: key}) as client:
        for name, (path, params) in cases.items():
            first = client.get(path, params=params)
            if first.status_code != 200:
                out.append((name, float("nan"), float("nan"), f"HTTP {first.status_code}", 100.0))
                continue

            def get(path: str = path, params: dict[str, str] = params) -> None:
                assert client.get(path, params=params).status_code == 200

            out.append((name, *_timed(get, samples), "", 100.0))
    return out


def time_bulk(url: str, n: int, rounds: int = 3) -> tuple[float, float]:
    """Median seconds of (job, bare) over `rounds` fresh id ranges. Each round tags one range both ways,
    bare first; a CHECKPOINT before each timing keeps a checkpoint the previous write forced out of it."""
    import psycopg2

    from cancelflow.db import transaction
    from cancelflow.services import bulk

    conn = psycopg2.connect(url)
    conn.autocommit = True
    jobs, bares = [], []
    with conn.cursor() as cur:
        cur.execute("INSERT INTO tags (key) VALUES ('bench-bare'), ('bench-job') ON CONFLICT DO NOTHING")
        for r in range(rounds):
            low, high = r * n + 1, (r + 1) * n
            cur.execute("CHECKPOINT")
            start = time.perf_counter()
            cur.execute(
                "INSERT INTO cancellation_request_tags (request_id, tag_id) SELECT r.id, t.id FROM "
                "cancellation_requests r JOIN tags t ON t.key = 'bench-bare' WHERE r.id BETWEEN %s AND %s "
                "ON CONFLICT DO NOTHING",
                (low, high),
            )
            bares.append(time.perf_counter() - start)
            cur.execute("CHECKPOINT")
            start = time.perf_counter()
            with transaction() as session:
                job_id = bulk.create_job(session, "add", ["bench-job"], ids=range(low, high + 1)).id
            bulk.drive(job_id, transaction)
            jobs.append(time.perf_counter() - start)
    conn.close()
    return statistics.median(jobs), statistics.median(bares)


CHILD = "--export-child"


def export_child(url: str) -> None:
    """Runs in a fresh process: CSV export of everything to /dev/null; prints rows, seconds, peak RSS."""
    from cancelflow.db import get_engine
    from cancelflow.services import exports

    engine = get_engine(url)
    rows = 0
    start = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        for chunk in exports.csv_chunks(exports.stream_batches(engine, exports.export_select())):
            sink.write(chunk)
            rows += chunk.count(b"\n")
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{rows - 1} {seconds} {peak_mb}")


def time_copy(url: str) -> float:
    import psycopg2

    from cancelflow.db import get_engine
    from cancelflow.services import exports

    sql = str(
        exports.export_select().compile(
            dialect=get_engine(url).dialect, compile_kwargs={"literal_binds": True}
        )
    )
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur, open(os.devnull, "w") as sink:
            start = time.perf_counter()
            cur.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER)", sink)
            return time.perf_counter() - start
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--bulk", type=int, default=100_000)
    parser.add_argument("--no-bulk", action="store_true", help="skip the bulk tagging and export figures")
    parser.add_argument(
        "--keep-data",
        action="store_true",
        help="keep the generated data set as a template database and start from it next time "
        "(named by --rows and a digest of the generator and the migrations; drop cf_bench_data_* to free it)",
    )
    parser.add_argument(CHILD, dest="child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # figures as they come
    if args.child:
        export_child(args.child)
        return 0

    from bench._env import bench_environment, keep_as_template, template_exists
    from bench.graphql_latency import accept_latency
    from bench.graphql_limits import print_figures as rate_limit_figures

    workdir = Path(tempfile.mkdtemp(prefix="cf-bench-api-"))
    template = data_set_name(args.rows) if args.keep_data else None
    with bench_environment(workdir, template=template) as url:
        started = time.perf_counter()
        if template is not None and template_exists(url, template):
            print(f"{args.rows:,} requests copied from the kept data set {template}")
        else:
            generate(url, args.rows)
            print(f"generated {args.rows:,} requests in {time.perf_counter() - started:.1f}s (set-based SQL)")
            if template is not None:
                keep_as_template(url, template)
                print(f"kept as {template} for the next --keep-data run")

        from cancelflow.db import transaction
        from cancelflow.services.tokens import create_token

        with transaction() as session:
            _, key = create_token(session, name="bench", kind="staff")
        api, base = start_api(workdir)
        try:
            print(f"\nlist latency over HTTP (uvicorn, httpx, {args.samples} sequential requests each), ms:")
            print(f"  {'case':32} {'p50':>8} {'p95':>8}  note")
            for name, p50, p95, note in time_lists(base, key, args.samples, args.rows):
                flag = "" if p95 != p95 else ("  ok" if p95 < 50 else "  over 50 ms target")
                print(f"  {name:32} {p50:8.1f} {p95:8.1f}  {note}{flag}")
            print(f"\ncosts that must not grow with history ({args.samples} sequential samples each), ms:")
            print(f"  {'case':40} {'p50':>8} {'p95':>8}  note")
            for name, p50, p95, note, target in time_history(base, args.samples, args.rows):
                flag = (
                    ""
                    if p95 != p95 or target != target
                    else ("  ok" if p95 < target else f"  over {target:.0f} ms target")
                )
                print(f"  {name:40} {p50:8.1f} {p95:8.1f}  {note}{flag}")
        finally:
            api.terminate()
            api.wait(timeout=20)
        accept_latency(workdir, args.samples)
        rate_limit_figures(1000)  # the cost of the throttling checks per request

        if args.no_bulk:
            return 0
        job, bare = time_bulk(url, args.bulk)
        print(
            f"\nbulk tag {args.bulk:,} requests (median of 3 ranges): job {job:.2f}s, bare INSERT … SELECT {bare:.2f}s, "
            f"ratio {job / bare:.2f} (target <= 1.5)"
        )

        # Three rounds, COPY then export each time, medians: one run of either swings with the cache and
        # with autovacuum catching up on the tagging above.
        copy_rates, export_rates, peaks = [], [], []
        for _ in range(3):
            copy_rates.append(args.rows / time_copy(url))
            child = subprocess.run(
                [sys.executable, __file__, CHILD, url], capture_output=True, text=True, check=True
            )
            rows, seconds, peak = child.stdout.split()
            export_rates.append(int(rows) / float(seconds))
            peaks.append(float(peak))
        export_rate, copy_rate = statistics.median(export_rates), statistics.median(copy_rates)
        print(
            f"\nCSV export of {int(rows):,} rows (median of 3): {export_rate:,.0f} rows/s, peak RSS "
            f"{max(peaks):.0f} MB (target < 200); COPY TO STDOUT {copy_rate:,.0f} rows/s; "
            f"ratio {export_rate / copy_rate:.2f} (target >= 0.5)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
