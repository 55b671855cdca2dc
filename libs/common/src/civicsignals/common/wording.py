"""What a resident reads, in their language: status names and dates, the same in notifier's
e-mails and intake's tracking page, so a mail and the page it links to never say it differently."""

# Turkish spells with the dotless i (U+0131) on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

from civicsignals.common.tenants import Tenant

#: The staff pages' languages (dashboard, privacy desk): Dutch and English.
SUPPORTED_LANGUAGES = ("nl", "en")
#: What residents are answered in (mail, tracking page): Dutch and English always (DESIGN §6), and
#: Turkish, Polish and Arabic, the languages after those that most residents of Dutch towns write
#: in, where the municipality lists them in ``languages`` in its ``tenant.yaml``.
RESIDENT_LANGUAGES = ("nl", "en", "tr", "pl", "ar")
RIGHT_TO_LEFT = frozenset({"ar"})
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
    "tr": {
        "received": "alındı",
        "triage": "değerlendiriliyor",
        "assigned": "ilgili birime iletildi",
        "in_progress": "işlemde",
        "waiting_on_resident": "yanıtınızı bekliyor",
        "forwarded": "ortak bir kuruluşa iletildi",
        "resolved": "çözüme kavuşturuldu",
        "closed": "kapatıldı",
        "reopened": "yeniden açıldı",
        "rejected": "işleme alınmadı",
        "duplicate": "daha önceki bir bildirimle birleştirildi",
        "cancelled": "geri çekildi",
    },
    "pl": {
        "received": "przyjęte",
        "triage": "w trakcie weryfikacji",
        "assigned": "przekazane do właściwego wydziału",
        "in_progress": "w trakcie realizacji",
        "waiting_on_resident": "czeka na Państwa odpowiedź",
        "forwarded": "przekazane do organizacji partnerskiej",
        "resolved": "zrealizowane",
        "closed": "zamknięte",
        "reopened": "ponownie otwarte",
        "rejected": "nieprzyjęte do realizacji",
        "duplicate": "połączone z wcześniejszym zgłoszeniem",
        "cancelled": "wycofane",
    },
    "ar": {
        "received": "تم استلامه",
        "triage": "قيد الدراسة",
        "assigned": "تم توجيهه إلى القسم المختص",
        "in_progress": "قيد المعالجة",
        "waiting_on_resident": "في انتظار ردّكم",
        "forwarded": "تمت إحالته إلى مؤسسة شريكة",
        "resolved": "تمت معالجته",
        "closed": "تم إغلاقه",
        "reopened": "تمت إعادة فتحه",
        "rejected": "لم يُقبل للمعالجة",
        "duplicate": "تم دمجه مع بلاغ سابق",
        "cancelled": "تم سحبه",
    },
}

#: Month names as a date is written in each language ("7 december 2026", "7 grudnia 2026").
MONTHS: dict[str, tuple[str, ...]] = {
    "nl": (
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
    ),
    "en": (
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ),
    "tr": (
        "Ocak",
        "Şubat",
        "Mart",
        "Nisan",
        "Mayıs",
        "Haziran",
        "Temmuz",
        "Ağustos",
        "Eylül",
        "Ekim",
        "Kasım",
        "Aralık",
    ),
    "pl": (
        "stycznia",
        "lutego",
        "marca",
        "kwietnia",
        "maja",
        "czerwca",
        "lipca",
        "sierpnia",
        "września",
        "października",
        "listopada",
        "grudnia",
    ),
    "ar": (
        "يناير",
        "فبراير",
        "مارس",
        "أبريل",
        "مايو",
        "يونيو",
        "يوليو",
        "أغسطس",
        "سبتمبر",
        "أكتوبر",
        "نوفمبر",
        "ديسمبر",
    ),
}


def base_language(language: str | None) -> str:
    """A language tag's primary subtag, lower case: ``nl-BE`` is ``nl``; none is ``""``."""
    return (language or "").split("-", 1)[0].lower()


def language_of(language: str | None) -> str:
    """The staff pages' language for a ``lang`` parameter: ``nl-BE`` is Dutch; unknown is Dutch."""
    base = base_language(language)
    return base if base in SUPPORTED_LANGUAGES else DEFAULT_LANGUAGE


def resident_language(language: str | None, tenant: Tenant | None) -> str:
    """The language a resident who wrote in ``language`` is answered in, by mail and on the
    tracking page: Dutch or English as written; Turkish, Polish or Arabic when the tenant lists
    that language in ``languages``; otherwise Dutch.

    Why the tenant decides: a municipality answers in a language only when it can read the
    replies and stand behind the texts (it may edit the mail templates in each language)."""
    base = base_language(language)
    if base in SUPPORTED_LANGUAGES:
        return base
    listed = tenant.settings.get("languages") if tenant is not None else None
    if base in RESIDENT_LANGUAGES and isinstance(listed, list) and base in listed:
        return base
    return DEFAULT_LANGUAGE


def text_direction(language: str) -> str:
    """``rtl`` for Arabic, ``ltr`` otherwise: the ``dir`` of a page or mail in that language."""
    return "rtl" if language in RIGHT_TO_LEFT else "ltr"


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
    months = MONTHS.get(language, MONTHS[DEFAULT_LANGUAGE])
    return f"{local.day} {months[local.month - 1]} {local.year}"
