"""The e-mails sent to a person about their signals, asked of notifier for the access document (AVG art. 15).

Notifier sends the resident's mails (the acknowledgement, status changes, the resolution, a
reopening) and keeps a delivery log of them: which template, when, how it went, how many tries;
never the address (it reads that from intake for each mail and drops it) nor the text. Which
mails went to a person, when, and whether they arrived is personal data of that person, so the
access document lists them per signal. Intake asks notifier for each signal
(``GET {notifier_url}/v1/deliveries?signal=<id>&channel=email``, following ``next_cursor``) the
way it asks every service for its part of the document (:mod:`civicsignals.intake.accessparts`:
intake's service key, which notifier lets read one signal's deliveries with ``cases:read``; all or
nothing; a :class:`~civicsignals.intake.accessparts.PartUnavailable` naming notifier when it
cannot be asked). Nothing here logs a person's data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from civicsignals.intake.accessparts import OtherService, utc_text

#: One mail as the access document shows it (see ``accessrequest``).
Mail = dict[str, Any]

#: Deliveries per page asked of notifier (its most): one page holds every mail of a signal.
PAGE_SIZE = 200


async def mails_of_signals(
    notifier: OtherService, tenant: str, signal_ids: Iterable[str]
) -> dict[str, list[Mail]]:
    """The e-mails notifier sent (or tried, or left unsent) about each signal, by signal id,
    oldest first; raises :class:`~civicsignals.intake.accessparts.PartUnavailable` when any
    signal cannot be asked for."""

    async def _mails_of_signal(key: str, signal_id: str) -> list[Mail]:
        mails: list[Mail] = []
        cursor: str | None = None
        while True:
            query: dict[str, str | int] = {"signal": signal_id, "channel": "email", "limit": PAGE_SIZE}
            if cursor is not None:
                query["cursor"] = cursor
            url = notifier.url("/v1/deliveries", query)
            page = await notifier.get_json(key, url)
            try:
                mails.extend(mail_of_delivery(item) for item in page["items"])
                following = page["next_cursor"]
            except (ValueError, KeyError, TypeError):
                raise notifier.unavailable(
                    url, "answered something that is not a page of deliveries"
                ) from None
            if not following:
                break
            if following == cursor:
                raise notifier.unavailable(url, "answered the same page again")
            cursor = str(following)
        # Notifier lists newest first; the document tells the story in order, as the status history.
        mails.reverse()
        return mails

    return await notifier.ask_each(tenant, signal_ids, _mails_of_signal)


def mail_of_delivery(delivery: Mapping[str, Any]) -> Mail:
    """One e-mail delivery of notifier's log (``DeliveryPublic``) as a resident reads it: when it
    was made, which message, how it went, when it was handed over, after how many tries. Not the
    log's ids, event or error texts: they are notifier's bookkeeping, not the person's data."""
    delivered_at = delivery["delivered_at"]
    return {
        "created_at": utc_text(delivery["created_at"]),
        "template": delivery["template"],
        "status": delivery["status"],
        "delivered_at": utc_text(delivered_at) if delivered_at else None,
        "attempts": int(delivery["attempts"]),
    }
