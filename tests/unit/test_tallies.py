"""The tally rows behind /metrics, the overview and the status tabs: equal to counting the tables at every
committed state, whatever wrote the rows (the services, bulk SQL, a delete), through rollbacks, a backend
killed mid-transaction, concurrent writers and compaction running beside an open writer."""

from __future__ import annotations

import random
import threading
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, delete, text, update
from sqlalchemy.orm import Session

from cancelflow.db import get_engine, transaction
from cancelflow.models import CancellationRequest, MoneyTransaction
from cancelflow.models.enums import PlanStatus, RefundTarget, RequestStatus, StepKind, StepStatus
from cancelflow.services import tallies
from tests.factories import approved_plan, new_order, new_request, step_of

# name -> the GROUP BY the tally must equal (first key, second key, count, amount).
TRUTH = {
    "requests": "SELECT status, '', count(*), 0 FROM cancellation_requests GROUP BY 1, 2",
    "plans": "SELECT status, upper(currency), count(*), 0 FROM cancellation_plans GROUP BY 1, 2",
    "steps": "SELECT status, kind, count(*), 0 FROM workflow_steps GROUP BY 1, 2",
    "deliveries": "SELECT status, '', count(*), 0 FROM webhook_deliveries GROUP BY 1, 2",
    "money": "SELECT target, upper(currency), count(*), sum(amount) FROM money_transactions GROUP BY 1, 2",
    "orders": "SELECT upper(currency), '', count(*), 0 FROM orders GROUP BY 1, 2",
}


def truth(db: Session | Connection, name: str) -> dict[tuple[str, str], tuple[int, Decimal]]:
    return {(k1, k2): (int(n), Decimal(a)) for k1, k2, n, a in db.execute(text(TRUTH[name]))}


def assert_exact(db: Session) -> None:
    for name in TRUTH:
        assert tallies.sums(db, name) == truth(db, name), name


def committed_exact() -> None:
    with transaction() as db:
        assert_exact(db)


def committed_requests(n: int) -> list[int]:
    order = new_order(quantity=n, items=1)
    return [new_request(order, quantity=1).id for _ in range(n)]


def test_every_kind_of_write_is_tallied_in_its_own_transaction(session: Session) -> None:
    assert_exact(session)
    plan = approved_plan(session, currency="eur")
    order = new_order(quantity=3, session=session)
    ids = [new_request(order, session=session, quantity=1).id for _ in range(2)]
    step = step_of(session, plan, StepKind.route)
    session.add(
        MoneyTransaction(
            plan_id=plan.id,
            step_id=step.id,
            target=RefundTarget.bank_transfer,
            amount=Decimal("12.34"),
            currency="eur",
            idempotency_key=uuid.uuid4().hex,
        )
    )
    session.flush()
    assert_exact(session)  # the transaction sees its own deltas
    # Bulk SQL outside the services is tallied too, and a statement that changes no key adds no row.
    session.execute(
        update(CancellationRequest).where(CancellationRequest.id.in_(ids)).values(status="rejected")
    )
    session.execute(text("UPDATE workflow_steps SET status = 'dead' WHERE id = :id"), {"id": step.id})
    before = session.scalar(text("SELECT count(*) FROM tallies"))
    session.execute(update(CancellationRequest).where(CancellationRequest.id == ids[0]).values(quantity=1))
    assert session.scalar(text("SELECT count(*) FROM tallies")) == before
    session.execute(
        text("UPDATE cancellation_plans SET status = :s WHERE id = :id"),
        {"s": PlanStatus.failed, "id": plan.id},
    )
    assert_exact(session)
    session.execute(delete(MoneyTransaction).where(MoneyTransaction.plan_id == plan.id))
    assert_exact(session)


def test_a_rolled_back_change_leaves_the_tallies_as_they_were(database: str) -> None:
    ids = committed_requests(3)
    with transaction() as db:
        before = tallies.sums(db, "requests")
    with get_engine().connect() as conn, conn.begin() as tx:
        conn.execute(
            update(CancellationRequest).where(CancellationRequest.id.in_(ids)).values(status="completed")
        )
        tx.rollback()
    with transaction() as db:
        assert tallies.sums(db, "requests") == before
    committed_exact()


def test_a_backend_killed_mid_transaction_leaves_no_delta(database: str) -> None:
    """A crash between the change and its commit: PostgreSQL rolls back the change and its tally rows."""
    ids = committed_requests(2)
    victim = get_engine().connect()
    try:
        victim.begin()
        victim.execute(
            update(CancellationRequest).where(CancellationRequest.id.in_(ids)).values(status="completed")
        )
        pid = victim.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with get_engine().connect() as admin:
            assert admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar_one()
    finally:
        victim.invalidate()
    with transaction() as db:
        statuses = db.scalars(select_status(ids)).all()
    assert set(statuses) == {RequestStatus.waiting}
    committed_exact()


def select_status(ids: list[int]) -> Any:
    from sqlalchemy import select

    return select(CancellationRequest.status).where(CancellationRequest.id.in_(ids))


def test_writers_to_the_same_status_do_not_wait_for_each_other(database: str) -> None:
    """Tally rows are appended, never updated: an open transaction that moved a request to `completed`
    does not block another one doing the same (each would wait on a shared counter row otherwise)."""
    first_id, second_id = committed_requests(2)
    with get_engine().connect() as first, get_engine().connect() as second:
        first.begin()
        first.execute(
            update(CancellationRequest).where(CancellationRequest.id == first_id).values(status="completed")
        )
        second.begin()
        second.execute(text("SET LOCAL lock_timeout = '2s'"))  # waiting would fail here, not hang
        second.execute(
            update(CancellationRequest).where(CancellationRequest.id == second_id).values(status="completed")
        )
        second.commit()
        first.commit()
    committed_exact()


def test_concurrent_writers_and_compaction_stay_exact(database: str) -> None:
    ids = committed_requests(24)
    statuses = [s.value for s in RequestStatus]
    errors: list[BaseException] = []

    def writer(mine: list[int], seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(15):
                with transaction() as db:
                    db.execute(
                        update(CancellationRequest)
                        .where(CancellationRequest.id == rng.choice(mine))
                        .values(status=rng.choice(statuses))
                    )
                    if rng.random() < 0.3:
                        tallies.compact(db)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(ids[i::4], i)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    committed_exact()


def test_compaction_beside_an_open_writer_keeps_its_delta(database: str) -> None:
    [request_id] = committed_requests(1)
    with get_engine().connect() as writer:
        writer.begin()
        writer.execute(
            update(CancellationRequest).where(CancellationRequest.id == request_id).values(status="approved")
        )
        with transaction() as db:
            tallies.compact(db)  # cannot see the writer's uncommitted delta, so leaves it alone
        writer.commit()
    committed_exact()
    with transaction() as db:
        tallies.compact(db)
    with transaction() as db:
        assert_exact(db)
        per_key = db.execute(text("SELECT name, k1, k2, count(*) FROM tallies GROUP BY 1, 2, 3")).all()
        assert all(n == 1 for *_, n in per_key)


def test_steps_are_tallied_by_status_and_kind(session: Session) -> None:
    plan = approved_plan(session)
    before = tallies.sums(session, "steps")
    step = step_of(session, plan, StepKind.route)
    session.execute(text("UPDATE workflow_steps SET status = 'done' WHERE id = :id"), {"id": step.id})
    after = tallies.sums(session, "steps")
    key_pending, key_done = (StepStatus.pending.value, "route"), (StepStatus.done.value, "route")
    assert after.get(key_pending, (0, 0))[0] == before.get(key_pending, (0, 0))[0] - 1
    assert after[key_done][0] == before.get(key_done, (0, 0))[0] + 1
