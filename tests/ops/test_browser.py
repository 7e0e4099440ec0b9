"""What an operator sees in a real browser: Flower's workers and tasks, and the API docs, offline.

Headless Chromium (Debian package `chromium`) loads the pages and runs their JavaScript; the test reads
the rendered DOM and saves screenshots under test-output/<test>/.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.factories import VALID_IBAN
from tests.harness import PYTHON, Proc, Stack, free_port, wait_for
from tests.workflow.conftest import make_order, make_service, stack, submit, wait_status

__all__ = ["stack"]  # the module-scoped running stack, shared with the workflow tests' fixture

pytestmark = pytest.mark.worker

CHROMIUM = Path("/usr/bin/chromium")
FLOWER_USER, FLOWER_PASSWORD = "ops", "flower-pass"
_IBAN_ANYWHERE = re.compile(r"\b[A-Z]{2}\d{2}(?:\s?[A-Z0-9]){10,30}\b")
_EMAIL_ANYWHERE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.skip("Chromium is missing: `apt-get update && apt-get install chromium` (CI installs it)")
    return CHROMIUM


class Browser:
    def __init__(self, binary: Path, profile: Path) -> None:
        self.binary = binary
        self.profile = profile

    def _run(self, *args: str) -> str:
        argv = [
            str(self.binary),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={self.profile}",
            # Let the page's scripts (Swagger UI, Flower's datatables) fetch and render before the dump.
            "--virtual-time-budget=8000",
            *args,
        ]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    def dom(self, url: str) -> str:
        return self._run("--dump-dom", url)

    def screenshot(self, url: str, path: Path) -> Path:
        self._run(f"--screenshot={path}", "--window-size=1400,900", url)
        assert path.exists(), f"no screenshot at {path}"
        assert path.stat().st_size > 1000
        return path


@pytest.fixture(scope="module")
def browser(chromium: Path, tmp_path_factory: pytest.TempPathFactory) -> Browser:
    return Browser(chromium, tmp_path_factory.mktemp("chromium-profile"))


@pytest.fixture(scope="module")
def flower(stack: Stack) -> Iterator[str]:
    """Flower as `make run` starts it (basic auth, a task cap), on the stack's broker; its base URL."""
    port = free_port()
    proc = Proc(
        "flower",
        [PYTHON, "-m", "celery", "-A", "cancelflow.worker.app", "flower", f"--port={port}",
         f"--basic_auth={FLOWER_USER}:{FLOWER_PASSWORD}", "--max_tasks=1000", "--address=127.0.0.1"],
        stack.workdir / "logs" / "flower.log",
        stack.env,
    )  # fmt: skip
    proc.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(f"{base}/healthcheck"), timeout=60, what="flower listening")
        assert httpx.get(f"{base}/workers", timeout=10).status_code == 401  # auth is on
        # The worker sends no task events until a monitor asks: Flower turns them on itself (every 5 s),
        # and from then on it lists every task, beat's sweeps (every second here) first.
        wait_for(
            lambda: _tasks_json(base), timeout=60, interval=1, what="Flower to turn the worker's events on"
        )
        yield base
    finally:
        proc.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code in (200, 401)
    except httpx.HTTPError:
        return False


def with_auth(url: str) -> str:
    return url.replace("http://", f"http://{FLOWER_USER}:{FLOWER_PASSWORD}@", 1)


def _tasks_json(flower: str) -> dict[str, dict[str, object]]:
    """Flower's /api/tasks: every task it keeps, with the argument reprs it shows."""
    response = httpx.get(f"{flower}/api/tasks", auth=(FLOWER_USER, FLOWER_PASSWORD), timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_flower_shows_workers_and_tasks_without_personal_data(
    stack: Stack, flower: str, browser: Browser, output_dir: Path
) -> None:
    # Given one card refund and one bank transfer with an IBAN, run by the stack's worker
    service = make_service(stack, policy="accept")
    card = make_order(service)
    cash = make_order(service, method="cash_on_delivery", email="ayse.yilmaz@example.com")
    wait_status(submit(order_item=card["items"][0]["id"], quantity=2), "completed")
    wait_status(
        submit(order_item=cash["items"][0]["id"], iban=VALID_IBAN, holder_name="Ayşe Yılmaz"), "completed"
    )
    # Flower shows the hops that crossed the broker: validation, routing and notifying run in the submit's
    # task, and closing in the money step's (steps continued in-process)
    expected = {"cancellations.submit", "payments.refund", "payments.bank_transfer"}

    # When an operator opens Flower
    def seen() -> dict[str, dict[str, object]] | None:
        tasks = _tasks_json(flower)
        return tasks if expected <= {str(t.get("name")) for t in tasks.values()} else None

    tasks = wait_for(seen, timeout=60, interval=1, what=f"{expected} in Flower's /api/tasks")
    workers = browser.dom(with_auth(f"{flower}/workers"))

    # The rows are rendered by the page's script after it fetches them: under load that can miss the
    # dump's time budget, so the page is read again until they are there (or the wait fails the test).
    def rendered_tasks_page() -> str:
        page = browser.dom(with_auth(f"{flower}/tasks"))
        return page if "workflow.sweep_due" in page else ""

    tasks_page = wait_for(
        rendered_tasks_page, timeout=120, interval=2, what="task rows in Flower's /tasks page"
    )
    browser.screenshot(with_auth(f"{flower}/workers"), output_dir / "flower-workers.png")
    browser.screenshot(with_auth(f"{flower}/tasks"), output_dir / "flower-tasks.png")
    (output_dir / "flower-tasks.json").write_text(json.dumps(tasks, indent=2, default=str))
    # The task list pages newest first and beat's sweeps fill it, so each flow task is opened by id.
    pages = {}
    for name in ("cancellations.submit", "payments.refund"):
        task_id = max((t for t in tasks.values() if t.get("name") == name), key=lambda t: t["received"])[
            "uuid"
        ]
        pages[name] = browser.dom(with_auth(f"{flower}/task/{task_id}"))
        browser.screenshot(with_auth(f"{flower}/task/{task_id}"), output_dir / f"flower-{name}.png")

    # Then the worker and the tasks are listed
    assert f"worker-{os.getpid()}@" in workers
    assert "workflow.sweep_due" in tasks_page  # rows rendered by the page's script, through basic auth
    for name, page in pages.items():
        assert name in page
        assert f"worker-{os.getpid()}@" in page
    assert (
        "&lt;redacted&gt;" in pages["cancellations.submit"] or "<redacted>" in pages["cancellations.submit"]
    )
    # And no argument Flower keeps shows an IBAN, a name or an e-mail address: ids only
    shown = [f"{t.get('args')} {t.get('kwargs')}" for t in tasks.values()]
    assert any("'<redacted>'" in s for s in shown)  # the storefront message's personal fields
    for text in shown:
        assert VALID_IBAN not in text.replace(" ", "")
        assert not _IBAN_ANYWHERE.search(text), text
        assert not _EMAIL_ANYWHERE.search(text), text
        assert "Yılmaz" not in text
    for page in (tasks_page, *pages.values()):
        assert VALID_IBAN not in page
        assert "ayse.yilmaz" not in page
        assert "Yılmaz" not in page


def test_api_docs_render_offline(stack: Stack, browser: Browser, output_dir: Path) -> None:
    # Given no internet: every asset of the docs page is served by the API itself
    page = httpx.get(f"{stack.api_url}/api/docs/", timeout=10).text
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page)
    assert assets
    assert all(a.startswith("/") for a in assets), assets
    for asset in assets:
        assert httpx.get(f"{stack.api_url}{asset}", timeout=10).status_code == 200, asset

    # When a browser renders it, Swagger UI builds the operation list from /api/schema/
    dom = browser.dom(f"{stack.api_url}/api/docs/")
    browser.screenshot(f"{stack.api_url}/api/docs/", output_dir / "api-docs.png")

    # Then the operations are there
    assert "swagger-ui" in dom
    assert "opblock" in dom, dom[:1000]
    assert "cancellation_request.json" in dom
