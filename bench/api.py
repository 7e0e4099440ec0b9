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
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
         (ARRAY['waiting', 'approved', 'rejected', 'completed'])[1 + n % 4],
         CASE WHEN n % 3 = 0 THEN 'TR330006100519786457841326' END,
         CASE WHEN n % 3 = 0 THEN 'Holder ' || n END, 1, n % 10 = 0, '{}', 1,
         now() - make_interval(secs => (:rows - n)), now() - make_interval(secs => (:rows - n))
  FROM generate_series(1, :rows) n;
INSERT INTO cancellation_plans (id, request_id, status, plan_type, amount, currency, refund_target, version)
  SELECT n, n, (ARRAY['waiting', 'confirmation_waiting', 'confirmed', 'waiting_for_payment', 'completed',
                      'rejected', 'failed'])[1 + n % 7],
         (ARRAY['cancel', 'refund'])[1 + n % 2], 49.90, 'try',
         (ARRAY['original_payment', 'bank_transfer', 'loyalty_money'])[1 + n % 3], 1
  FROM generate_series(1, :rows) n WHERE n % 10 < 7;
INSERT INTO tags (id, key) SELECT t, 'tag' || t FROM generate_series(1, 20) t;
INSERT INTO cancellation_request_tags (request_id, tag_id)
  SELECT n, 1 + n % 20 FROM generate_series(1, :rows) n WHERE n % 5 = 0;
"""


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
    parser.add_argument(CHILD, dest="child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # figures as they come
    if args.child:
        export_child(args.child)
        return 0

    from bench._env import bench_environment
    from bench.graphql_latency import accept_latency
    from bench.graphql_limits import print_figures as rate_limit_figures

    workdir = Path(tempfile.mkdtemp(prefix="cf-bench-api-"))
    with bench_environment(workdir) as url:
        started = time.perf_counter()
        generate(url, args.rows)
        print(f"generated {args.rows:,} requests in {time.perf_counter() - started:.1f}s (set-based SQL)")

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
        finally:
            api.terminate()
            api.wait(timeout=20)
        accept_latency(workdir, args.samples)
        rate_limit_figures(1000)  # the cost of the throttling checks per request

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
