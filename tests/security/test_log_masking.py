"""Every log line, ours (structlog) or another library's (stdlib records with `data`), is masked
recursively: IBANs in any spelling, e-mail addresses, values under personal keys; task names and task
ids stay readable."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

IBAN_FORMS = [
    "DE89370400440532013000",
    "de89370400440532013000",
    "DE89 3704 0044 0532 0130 00",
    "de89-3704-0044-0532-0130-00",
]
TASK_ID = "de305d54-75b4-431b-adb2-eb6b9e546014"


def assert_clean(text: str) -> None:
    compact = "".join(c for c in text if c.isalnum()).upper()
    assert "370400440532013000" not in compact, text
    assert "Mustermann" not in text
    assert "max.m@" not in text


@pytest.mark.parametrize("iban", IBAN_FORMS)
def test_celery_style_records_are_masked_through_their_data(json_logs: io.StringIO, iban: str) -> None:
    kwargs = {"iban": iban, "holder_name": "Max Mustermann", "description": "max.m@example.org"}
    context = {"id": TASK_ID, "name": "cancellations.submit", "args": "[]", "kwargs": repr(kwargs)}
    logging.getLogger("celery.app.trace").info(
        "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s",
        {**context, "runtime": 0.1, "return_value": f"'{iban}'"},
        extra={"data": {**context, "raw": [kwargs]}},
    )
    line = json.loads(json_logs.getvalue())
    assert_clean(json_logs.getvalue())
    assert line["data"]["name"] == "cancellations.submit"
    assert TASK_ID in line["event"]


@pytest.mark.parametrize("iban", IBAN_FORMS)
def test_structlog_events_are_masked_at_any_depth(json_logs: io.StringIO, iban: str) -> None:
    structlog.get_logger("cancelflow.test").warning(
        "message rejected",
        errors={"iban": [f"bad {iban}"]},
        message={"holder_name": "Max Mustermann", "nested": [{"email": "max.m@example.org", "note": iban}]},
        note=f"holder_name='Max Mustermann' iban={iban.replace(' ', '+')}",
    )
    assert_clean(json_logs.getvalue())
    assert "message rejected" in json_logs.getvalue()


@pytest.mark.parametrize("movement_id", ["re_de0123456789abcdef01234567", "tr_be7145ab0123456789abcdef"])
def test_gateway_movement_ids_stay_readable(movement_id: str) -> None:
    """A payment gateway's refund and transfer ids are hex after a prefix and an underscore; a hex run
    that starts like a country code and two digits is not an IBAN there, and an operator needs the id."""
    from cancelflow.config.logging import mask_text

    assert mask_text(f"refund {movement_id} recorded") == f"refund {movement_id} recorded"
    for iban in IBAN_FORMS:  # while an IBAN beside it is still masked
        assert_clean(mask_text(f"refund {movement_id} to {iban}"))


# Texts built from the pieces masking looks for (keys in any case, quotes, "=", "@", IBAN-like runs, task ids)
_PIECES = st.sampled_from(
    ["iban", "IBAN", "Holder_Name", "e-mail", "email", "name", "NAME", "'", '"', "=", ": ", "@", "de89",
     "DE89 3704", "0044 0532 0130 00", TASK_ID, "x.y", "gb82west12345698765432", " ", "-", "_", "ab12", "ü"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_PIECES, st.text(max_size=4)), max_size=12).map("".join))
def test_the_quick_check_never_skips_a_text_masking_would_change(text: str) -> None:
    from cancelflow.config import logging as masking

    # mask_text returns a text unsearched when the quick check finds nothing any pattern needs: the four
    # patterns run on it unconditionally must leave such a text as it is
    if not masking._may_hold_personal(text):
        value = masking._QUOTED_PAIR.sub("<changed>", text)
        value = masking._BARE_PAIR.sub("<changed>", value)
        value = masking._CANDIDATES.sub(lambda m: "" if m.group("uuid") else "<changed>", value)
        value = masking._EMAIL.sub("<changed>", value)
        assert "<changed>" not in value, text
