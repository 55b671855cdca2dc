"""What a resident reads, in their language: status names and dates, the same in notifier's
e-mails and intake's tracking page, so a mail and the page it links to never say it differently."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

from civicsignals.common.tenants import Tenant

SUPPORTED_LANGUAGES = ("nl", "en")
DEFAULT_LANGUAGE = "nl"
DEFAULT_TIMEZONE = "Europe/Amsterdam"

STATUS_LABELS: dict[str, dict[str, str]] = {
    "nl": {
        "received": "ontvangen",
        "triage": "wordt beoordeeld",
        "assigned": "doorgezet naar de juiste afdeling",
        "in_progress": "in behandeling",
        "waiting_on_resident": "wacht op uw reactie",
        "forwarded": "doorgestuurd naar een partnerorganisatie",
        "resolved": "opgelost",
        "closed": "afgesloten",
        "reopened": "heropend",
        "rejected": "niet in behandeling genomen",
        "duplicate": "samengevoegd met een eerdere melding",
        "cancelled": "ingetrokken",
    },
    "en": {
        "received": "received",
        "triage": "being assessed",
        "assigned": "passed to the right department",
        "in_progress": "in progress",
        "waiting_on_resident": "waiting for your reply",
        "forwarded": "forwarded to a partner organisation",
        "resolved": "resolved",
        "closed": "closed",
        "reopened": "reopened",
        "rejected": "not taken into treatment",
        "duplicate": "merged with an earlier report",
        "cancelled": "withdrawn",
    },
}

_MONTHS_NL = (
    "januari",
    "februari",
    "maart",
    "april",
    "mei",
    "juni",
    "juli",
    "augustus",
    "september",
    "oktober",
    "november",
    "december",
)


def language_of(language: str | None) -> str:
    """The template language for what the resident wrote in: ``nl-BE`` is Dutch; unknown is Dutch."""
    base = (language or "").split("-", 1)[0].lower()
    return base if base in SUPPORTED_LANGUAGES else DEFAULT_LANGUAGE


def timezone_of(tenant: Tenant | None) -> str:
    """The clock the tenant's residents read: its ``timezone`` setting, Amsterdam's by default."""
    return str(tenant.settings.get("timezone", DEFAULT_TIMEZONE)) if tenant is not None else DEFAULT_TIMEZONE


#: How many days after their case ended a resident may reopen it, unless the tenant says otherwise.
DEFAULT_REOPEN_WITHIN_DAYS = 30


def reopen_within_days(tenant: Tenant | None) -> int | None:
    """``residents.reopen_within_days`` in ``tenant.yaml``: the default when the key is missing,
    None (no limit) when it is null. Intake enforces it; notifier's resolution mail states it. The
    tenant schema allows only a whole number of days from 0, or null."""
    raw = tenant.settings.get("residents") if tenant is not None else None
    if not isinstance(raw, dict) or "reopen_within_days" not in raw:
        return DEFAULT_REOPEN_WITHIN_DAYS
    days = raw["reopen_within_days"]
    return int(days) if isinstance(days, int) else None


def format_date(value: date | None, language: str, timezone: str = DEFAULT_TIMEZONE) -> str | None:
    """A date as a resident reads it: ``7 december 2026`` or ``7 December 2026``, local time (a
    moment is turned into the tenant's day first; a plain date is that day already)."""
    if value is None:
        return None
    local = value.astimezone(ZoneInfo(timezone)) if isinstance(value, datetime) else value
    if language == "nl":
        return f"{local.day} {_MONTHS_NL[local.month - 1]} {local.year}"
    return f"{local.day} {local.strftime('%B')} {local.year}"
