"""Operator commands: reply escalations, service reply policies, dead steps and their replay."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cancelflow.cli.guard import fail, transaction

console = Console()
err = Console(stderr=True)

escalations_app = typer.Typer(
    help="Cancellation requests whose fulfillment service missed its reply deadline.",
    invoke_without_command=True,
)
services_app = typer.Typer(help="Fulfillment services.", no_args_is_help=True)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str) -> int:
    """`90`, `90s`, `30m`, `6h`, `2d` -> whole seconds (at least 1)."""
    match = _DURATION.match(value.lower())
    if match is None:
        raise typer.BadParameter(f"{value!r} is not a duration (use seconds, or 30m, 6h, 2d)")
    seconds = round(float(match.group(1)) * _UNIT_SECONDS[match.group(2)])
    if seconds < 1:
        raise typer.BadParameter(f"{value!r} is shorter than a second")
    return seconds


def _age(since: datetime | None, now: datetime) -> str:
    if since is None:
        return ""
    seconds = int((now - since).total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days}d{hours}h"
    if hours:
        return f"{sign}{hours}h{minutes}m"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"


# --- escalations -----------------------------------------------------------------------------------------


@escalations_app.callback()
def escalations_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=0, help="Show the oldest N escalations (0: all of them).")] = 50,
) -> None:
    """List escalated requests (overdue, waiting for a staff decision) with their age, oldest first."""
    if ctx.invoked_subcommand is not None:
        return
    from cancelflow.services import escalation
    from cancelflow.services.clock import now

    stamp = now()
    with transaction() as session:
        total = escalation.count_escalations(session)
        rows = escalation.escalations(session, limit=limit or max(total, 1))
    if not rows:
        console.print("no escalated requests")
        return
    table = Table(
        "request", "plan", "fulfillment orders", "service", "reminders", "sent", "overdue", "deadline"
    )
    for row in rows:
        table.add_row(
            str(row.request_id),
            str(row.plan_id),
            ",".join(str(i) for i in row.fulfillment_order_ids),
            ",".join(row.services),
            str(row.reminders_sent),
            f"{_age(row.sent_at, stamp)} ago",
            _age(row.deadline_at, stamp),
            str(row.deadline_at)[:19],
        )
    console.print(table)
    shown = f"the oldest {len(rows)} of {total} shown (--limit 0 for all)" if len(rows) < total else ""
    console.print(
        f"{total} escalated{'; ' + shown if shown else ''}; "
        "decide with `cancelflow escalations resolve REQUEST_ID --action …`"
    )


@escalations_app.command("resolve")
def escalations_resolve(
    request_id: Annotated[int, typer.Argument(help="The cancellation request id (as listed).")],
    action: Annotated[
        str, typer.Option(help="cancel_locally, reject, or wait (extend the deadline by the policy's).")
    ],
    actor: Annotated[str, typer.Option(help="Who decides (recorded in the events).")] = "cli",
) -> None:
    """Decide an escalated request: cancel its fulfillment orders locally, reject it, or wait longer."""
    from cancelflow.errors import CancelflowError
    from cancelflow.services import escalation

    if action not in escalation.RESOLUTIONS:
        fail(f"--action must be one of {', '.join(escalation.RESOLUTIONS)}", code=2)
    try:
        with transaction() as session:
            plan = escalation.resolve(session, request_id, action=action, actor=actor)
            status, deadline = plan.status.value, plan.deadline_at
    except CancelflowError as exc:
        fail(exc.message)
    suffix = f"; new deadline {str(deadline)[:19]}" if action == "wait" else ""
    console.print(f"request {request_id}: {action}; plan is {status}{suffix}")


# --- services --------------------------------------------------------------------------------------------


@services_app.command("set-policy")
def services_set_policy(
    handle: str,
    deadline: Annotated[str | None, typer.Option(help="Reply deadline: seconds or 30m, 6h, 2d.")] = None,
    reminder_interval: Annotated[str | None, typer.Option(help="Time between reminders.")] = None,
    reminders: Annotated[int | None, typer.Option(help="How many reminders before the deadline.")] = None,
    action: Annotated[
        str | None, typer.Option(help="At the deadline: escalate, cancel_locally or reject.")
    ] = None,
) -> None:
    """Change a fulfillment service's reply policy (new requests get the new deadline)."""
    from cancelflow.errors import CancelflowError, Invalid
    from cancelflow.services import escalation

    try:
        with transaction() as session:
            service = escalation.set_reply_policy(
                session,
                handle,
                deadline_seconds=parse_duration(deadline) if deadline is not None else None,
                reminder_interval_seconds=(
                    parse_duration(reminder_interval) if reminder_interval is not None else None
                ),
                reminder_count=reminders,
                deadline_action=action,
            )
            shown = (
                f"{service.handle}: deadline {timedelta(seconds=service.reply_deadline_seconds)}, "
                f"reminder every {timedelta(seconds=service.reminder_interval_seconds)} "
                f"x{service.reminder_count}, then {service.deadline_action}"
            )
    except Invalid as exc:
        for name, messages in exc.field_errors.items():
            err.print(f"  {name}: {'; '.join(messages)}")
        fail(exc.message)
    except CancelflowError as exc:
        fail(exc.message)
    console.print(shown)


# --- dead steps and replay -------------------------------------------------------------------------------


def dead(limit: Annotated[int, typer.Option(min=1, max=10_000)] = 200) -> None:
    """List dead steps (retries exhausted) with their plan, kind, attempts and last error."""
    from cancelflow.services import replay

    table = Table("step", "plan", "request", "kind", "attempts", "died", "last error")
    with transaction() as session:
        rows = replay.dead_steps(session, limit=limit)
        for step in rows:
            table.add_row(
                str(step.id),
                str(step.plan_id or ""),
                str(step.request_id or ""),
                step.kind.value,
                f"{step.attempt}/{step.max_attempts}",
                str(step.modified_date)[:19],
                (step.last_error or "")[:120],
            )
    if not rows:
        console.print("no dead steps")
        return
    console.print(table)


def replay(
    step_id: Annotated[int | None, typer.Argument(help="A dead step's id.")] = None,
    plan: Annotated[int | None, typer.Option("--plan", help="Replay every dead step of this plan.")] = None,
    all_dead: Annotated[bool, typer.Option("--all-dead", help="Replay every dead step.")] = False,
    actor: Annotated[str, typer.Option(help="Who replays (recorded in the events).")] = "cli",
) -> None:
    """Resume dead steps: each goes back to pending (same idempotency key), its failed plan resumes."""
    from cancelflow.errors import CancelflowError
    from cancelflow.services import replay as replays

    if sum((step_id is not None, plan is not None, all_dead)) != 1:
        fail("give exactly one of STEP_ID, --plan ID or --all-dead", code=2)
    try:
        with transaction() as session:
            if step_id is not None:
                result = replays.replay_step(session, step_id, actor=actor)
            elif plan is not None:
                result = replays.replay_plan(session, plan, actor=actor)
            else:
                result = replays.replay_all_dead(session, actor=actor)
    except CancelflowError as exc:
        fail(exc.message)
    console.print(
        f"replayed {len(result.steps)} steps {result.steps}; resumed {len(result.plans)} plans {result.plans}"
    )
    for what, why in result.skipped.items():
        console.print(f"  skipped {what}: {why}")


def register(app: typer.Typer) -> None:
    """Add these commands to the `cancelflow` command."""
    app.add_typer(escalations_app, name="escalations")
    app.add_typer(services_app, name="services")
    app.command()(dead)
    app.command()(replay)
