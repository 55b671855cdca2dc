"""The framework-free cores of notifier: signing, retry schedule, address guard, templates."""

from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtplib.email import flatten_message
from standardwebhooks import Webhook, WebhookVerificationError

from civicsignals.common import wording
from civicsignals.notifier import messages
from civicsignals.notifier.addresses import UnsafeEndpoint, check_endpoint, check_url_shape, is_public
from civicsignals.notifier.schedule import Outcome, judge, parse_retry_after, retry_delay
from civicsignals.notifier.secretbox import SecretBox
from civicsignals.notifier.settings import DEFAULT_RETRY_SCHEDULE_S
from civicsignals.notifier.signing import (
    InvalidSecret,
    generate_secret,
    message_id,
    secret_bytes,
    webhook_headers,
)

NOW = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)


# --- signing, checked by the standardwebhooks package --------------------------------------------


def test_our_signature_verifies_with_the_standardwebhooks_package() -> None:
    secret = generate_secret()
    body = b'{"specversion":"1.0","id":"01KBH","data":{"x":"\xc3\xa9"}}'
    headers = webhook_headers([secret], "msg_abc", int(datetime.now(UTC).timestamp()), body)
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers) == {"specversion": "1.0", "id": "01KBH", "data": {"x": "é"}}


def test_two_secrets_during_a_rotation_both_verify_and_a_third_does_not() -> None:
    old, new, other = generate_secret(), generate_secret(), generate_secret()
    body = b'{"a":1}'
    headers = webhook_headers([new, old], "msg_rot", int(datetime.now(UTC).timestamp()), body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(old).verify(body, headers) == {"a": 1}
    assert Webhook(new).verify(body, headers) == {"a": 1}
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)


def test_a_changed_body_or_id_fails_verification() -> None:
    secret = generate_secret()
    stamp = int(datetime.now(UTC).timestamp())
    headers = webhook_headers([secret], "msg_1", stamp, b'{"a":1}')
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"a":2}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"a":1}', {**headers, "webhook-id": "msg_2"})


def test_secrets_are_checked_and_message_ids_are_deterministic() -> None:
    assert len(secret_bytes(generate_secret())) == 32
    for bad in ("nope", "whsec_!!!", "whsec_" + base64.b64encode(b"short").decode()):
        with pytest.raises(InvalidSecret):
            secret_bytes(bad)
    assert message_id("event-1", "endpoint-1") == message_id("event-1", "endpoint-1")
    assert message_id("event-1", "endpoint-1") != message_id("event-1", "endpoint-2")
    assert message_id("e", "x").startswith("msg_")


def test_secret_box_seals_per_endpoint(tmp_path: Path) -> None:
    box = SecretBox.from_setting("", tmp_path)
    sealed = box.seal("whsec_abc", "endpoint-1")
    assert "whsec_abc" not in sealed
    assert box.open(sealed, "endpoint-1") == "whsec_abc"
    with pytest.raises(Exception):  # noqa: B017 - AES-GCM's InvalidTag: bound to the endpoint
        box.open(sealed, "endpoint-2")
    # The embedded run's key file is reused, so sealed secrets survive a restart.
    assert SecretBox.from_setting("", tmp_path).open(sealed, "endpoint-1") == "whsec_abc"


# --- the retry schedule --------------------------------------------------------------------------


def test_the_default_schedule_spans_more_than_a_day_with_growing_delays() -> None:
    assert sum(DEFAULT_RETRY_SCHEDULE_S) > 86400
    assert sorted(DEFAULT_RETRY_SCHEDULE_S) == DEFAULT_RETRY_SCHEDULE_S
    assert retry_delay(DEFAULT_RETRY_SCHEDULE_S, 1) == 5
    assert retry_delay(DEFAULT_RETRY_SCHEDULE_S, len(DEFAULT_RETRY_SCHEDULE_S) + 1) is None


def _judge(status: int | None, attempts: int = 1, retry_after: str | None = None, error: str | None = None):
    return judge(
        status_code=status,
        error=error,
        retry_after=retry_after,
        attempts=attempts,
        schedule=[5, 30],
        now=NOW,
        retry_after_cap_s=3600,
    )


def test_answers_are_judged() -> None:
    assert _judge(204).outcome is Outcome.DELIVERED
    assert _judge(410).outcome is Outcome.GONE
    redirect = _judge(302)
    assert redirect.outcome is Outcome.RETRY and "redirects are not followed" in redirect.reason
    assert _judge(500).next_attempt_at == NOW + timedelta(seconds=5)
    assert _judge(500, attempts=2).next_attempt_at == NOW + timedelta(seconds=30)
    assert _judge(500, attempts=3).outcome is Outcome.FAILED
    assert _judge(None, error="timed out").reason == "timed out"


def test_429_honours_retry_after_in_seconds_and_as_a_date_capped() -> None:
    throttled = _judge(429, retry_after="120")
    assert throttled.outcome is Outcome.THROTTLED
    assert throttled.next_attempt_at == NOW + timedelta(seconds=120)
    as_date = "Sat, 28 Nov 2026 09:10:00 GMT"
    assert parse_retry_after(as_date, NOW, 3600) == 600
    assert parse_retry_after("999999", NOW, 3600) == 3600
    assert parse_retry_after("soon", NOW, 3600) is None
    # Without a usable Retry-After a 429 follows the schedule.
    assert _judge(429, retry_after="soon").next_attempt_at == NOW + timedelta(seconds=5)


# --- the address guard ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "::1",
        "fd00::1",
        "0.0.0.0",
        "::ffff:127.0.0.1",
    ],
)
def test_private_addresses_are_not_public(address: str) -> None:
    assert not is_public(address)


def test_public_addresses_are_public() -> None:
    assert is_public("93.184.216.34") and is_public("2606:4700::1111")


async def test_loopback_endpoints_are_refused_unless_allowed() -> None:
    with pytest.raises(UnsafeEndpoint, match="loopback"):
        await check_endpoint("http://127.0.0.1:9/hook", allow_private=False)
    with pytest.raises(UnsafeEndpoint, match="loopback"):
        await check_endpoint("http://localhost:9/hook", allow_private=False)
    await check_endpoint("http://127.0.0.1:9/hook", allow_private=True)
    for bad in ("ftp://example.org/", "http:///nohost", "https://user:pw@example.org/"):
        with pytest.raises(UnsafeEndpoint):
            check_url_shape(bad)


# --- templates -----------------------------------------------------------------------------------


def test_templates_render_in_the_residents_language_with_links(tmp_path: Path) -> None:
    book = messages.TemplateBook(tmp_path)
    for language, phrase in (("nl", "Hoe tevreden"), ("en", "How satisfied")):
        values = messages.example_values(messages.RESOLUTION, language, "https://gemeente.example")
        rendered = book.render("gouda", messages.RESOLUTION, language, values)
        assert phrase in rendered.text
        assert "https://gemeente.example/v1/tracking/7KQ2-M9XD-4HTC/feedback?score=5" in rendered.text
        assert 'href="https://gemeente.example/v1/tracking/7KQ2-M9XD-4HTC/feedback?score=1"' in rendered.html
    assert wording.language_of("en-GB") == "en" and wording.language_of("de") == "nl"
    assert wording.language_of(None) == "nl"


def test_the_resolution_mail_states_the_tenants_reopening_window(tmp_path: Path) -> None:
    book = messages.TemplateBook(tmp_path)
    for language, within, always in (
        ("nl", "binnen 14 dagen heropenen", "Dan kunt u uw melding heropenen"),
        ("en", "reopen your report within 14 days", "You can reopen your report on this page"),
    ):
        values = messages.example_values(messages.RESOLUTION, language, "https://gemeente.example")

        def text(days: int | None, values: dict[str, object] = values, language: str = language) -> str:
            rendered = book.render(
                "gouda", messages.RESOLUTION, language, {**values, "reopen_within_days": days}
            )
            return rendered.text

        assert within in text(14) and always not in text(14)
        assert always in text(None) and "14" not in text(None)
        no_reopening = text(0)  # the tenant lets no resident reopen: the mail does not offer it
        assert "reopen" not in no_reopening.lower() and "heropen" not in no_reopening
        assert "https://gemeente.example/v1/tracking/7KQ2-M9XD-4HTC" in no_reopening


def test_a_question_for_the_resident_sends_them_to_answer_it_on_their_page(tmp_path: Path) -> None:
    book = messages.TemplateBook(tmp_path)
    for language, answer, follow in (
        ("nl", "U kunt de vraag beantwoorden", "Hier ziet u hoe het ermee staat"),
        ("en", "You can answer the question", "Follow its progress here"),
    ):
        values = messages.example_values(messages.STATUS_UPDATE, language, "https://gemeente.example")
        asked = book.render(
            "gouda", messages.STATUS_UPDATE, language, {**values, "status": "waiting_on_resident"}
        )
        assert answer in asked.text and follow not in asked.text
        assert "https://gemeente.example/v1/tracking/7KQ2-M9XD-4HTC" in asked.text
        news = book.render("gouda", messages.STATUS_UPDATE, language, {**values, "status": "in_progress"})
        assert follow in news.text and answer not in news.text


def test_a_tenant_overrides_a_template_and_runs_in_the_sandbox(tmp_path: Path) -> None:
    folder = tmp_path / "gouda" / "templates"
    folder.mkdir(parents=True)
    (folder / "acknowledgement.en.txt").write_text(
        "{% block subject %}Got it: {{ tracking_code }}{% endblock %}{% block body %}Hi{% endblock %}"
    )
    book = messages.TemplateBook(tmp_path)
    values = messages.example_values(messages.ACKNOWLEDGEMENT, "en", "http://x")
    assert book.render("gouda", messages.ACKNOWLEDGEMENT, "en", values).subject == "Got it: 7KQ2-M9XD-4HTC"
    assert book.source_of("gouda", messages.ACKNOWLEDGEMENT, "en") == "tenant"
    assert book.source_of("gouda", messages.ACKNOWLEDGEMENT, "nl") == "default"
    with pytest.raises(messages.TemplateProblem) as problem:
        book.render(
            "gouda",
            messages.ACKNOWLEDGEMENT,
            "en",
            values,
            draft_text="{% block subject %}{{ ''.__class__.__mro__ }}{% endblock %}{% block body %}{% endblock %}",
        )
    assert problem.value.part == "text"
    with pytest.raises(messages.TemplateProblem, match="line 1"):
        book.render("gouda", messages.ACKNOWLEDGEMENT, "en", values, draft_html="{% if %}")


def test_which_status_changes_get_which_mail() -> None:
    assert not messages.status_mail_wanted("assigned", 1)  # the acknowledgement covers it
    assert not messages.status_mail_wanted("triage", 2)
    assert messages.status_mail_wanted("in_progress", 2)
    assert messages.status_mail_wanted("in_progress", 3, "department:afval")
    assert not messages.status_mail_wanted("in_progress", 3, "resident")  # their own answer
    assert not messages.status_mail_wanted("reopened", 4, "resident")
    assert messages.template_for_status("resolved") == messages.RESOLUTION
    assert messages.template_for_status("reopened") == messages.REOPENING
    assert messages.template_for_status("waiting_on_resident") == messages.STATUS_UPDATE
    assert wording.format_date(datetime(2026, 12, 6, 23, 30, tzinfo=UTC), "nl") == "7 december 2026"


def _sent_and_read_back(subject: str, sender: str, recipient: str) -> tuple[Any, Any]:
    rendered = messages.RenderedMessage(subject=subject, text="Beste Anna,\néén tip.\n", html="<p>één</p>")
    mail = messages.build_email(
        rendered, sender=sender, recipient=recipient, message_id="msg_1", domain="gemeente.example"
    )
    return mail, email.message_from_bytes(mail.as_bytes(), policy=email.policy.default)


def test_a_mail_reads_back_as_written_with_names_and_subjects_outside_ascii() -> None:
    subject = "Uw melding is opgelost — Súdwest-Fryslân (7KQ2-M9XD-4HTC)"
    _, back = _sent_and_read_back(
        subject, "Gemeente Súdwest-Fryslân <noreply@gemeente.example>", "Anna de Vriés <anna@example.org>"
    )
    assert back["Subject"] == subject
    assert back["From"].addresses[0].display_name == "Gemeente Súdwest-Fryslân"
    assert back["To"].addresses[0].addr_spec == "anna@example.org"
    assert back["Message-ID"] == "<msg_1@gemeente.example>" and back["Auto-Submitted"] == "auto-generated"
    assert back.get_content_type() == "multipart/alternative"
    assert back.get_body(preferencelist=("plain",)).get_content() == "Beste Anna,\néén tip.\n"
    assert back.get_body(preferencelist=("html",)).get_content() == "<p>één</p>"


def test_a_mailbox_outside_ascii_is_written_by_the_modern_api() -> None:
    mail, back = _sent_and_read_back("Uw melding", "Gemeente <noreply@gemeente.example>", "jé@voorbeeld.nl")
    assert mail.__class__.__name__ == "EmailMessage"
    assert back["To"].addresses[0].addr_spec == "jé@voorbeeld.nl"


# --- the mail's wire form, written without the generator -----------------------------------------

_DATE = re.compile(rb"^Date: .*$", re.MULTILINE)


def _generated(
    rendered: messages.RenderedMessage, sender: str, recipient: str, seed: int, reply_to: str | None = None
) -> bytes:
    """What aiosmtplib sent before: the compat32 Message flattened by the stdlib generator."""
    random.seed(seed)
    mail = messages.build_email(
        rendered,
        sender=sender,
        recipient=recipient,
        message_id="msg_1",
        domain="gemeente.example",
        reply_to=reply_to,
    )
    return _DATE.sub(b"Date: -", flatten_message(mail))


@pytest.mark.parametrize("seed", range(40))
def test_a_mail_written_directly_is_byte_for_byte_what_the_generator_writes(seed: int) -> None:
    chooser = random.Random(seed)
    pieces = ["From here on", ".", "..", "één", "tab\tend\t", "trailing ", "=3D", "a" * 90, "", "\r", "—"]
    text = "\n".join(" ".join(chooser.choices(pieces, k=chooser.randint(0, 6))) for _ in range(6))
    subject = " ".join(chooser.choices(["Uw", "melding", "(7KQ2-M9XD-4HTC)", "is", "opgelost"], k=5))
    senders = [
        "Gemeente Demo <noreply@demo.example>",
        '"Gemeente, Demo" <noreply@demo.example>',
        "x@y.nl",
        "Gé <g@demo.example>",
        '"Súdwest-Fryslân" <sf@sf.example>',
    ]
    recipients = ["bewoner1@example.org", "Anna de Vries <anna@example.org>", "o'brien+tag@example.org"]
    replies = [None, "klantcontact@demo.example", "Klantcontact Fryslân <kc@sf.example>"]
    sender, recipient = chooser.choice(senders), chooser.choice(recipients)
    reply_to = chooser.choice(replies)
    rendered = messages.RenderedMessage(subject=subject, text=text + "\n", html=f"<p>{text}</p>")
    random.seed(seed)
    direct = messages.encode_email(
        rendered,
        sender=sender,
        recipient=recipient,
        message_id="msg_1",
        domain="gemeente.example",
        reply_to=reply_to,
    )
    assert isinstance(direct, messages.OutgoingMail)
    assert direct.recipients == [email.utils.parseaddr(recipient)[1]]
    assert direct.sender == email.utils.parseaddr(sender)[1]
    assert _DATE.sub(b"Date: -", direct.data) == _generated(rendered, sender, recipient, seed, reply_to)


def test_a_mail_whose_headers_need_encoding_or_folding_is_left_to_the_generator() -> None:
    body = messages.RenderedMessage(subject="Uw melding", text="tekst\n", html="<p>tekst</p>")
    for subject, sender in (
        ("Uw melding is opgelost — Súdwest-Fryslân", "Gemeente <noreply@gemeente.example>"),
        (("Uw melding " * 8).strip(), "Gemeente <noreply@gemeente.example>"),
        ("Uw melding", "Gemeente Súdwest-Fryslân <noreply@gemeente.example>"),
    ):
        rendered = messages.RenderedMessage(subject=subject, text=body.text, html=body.html)
        mail = messages.encode_email(
            rendered, sender=sender, recipient="anna@example.org", message_id="msg_1", domain="g.example"
        )
        assert not isinstance(mail, messages.OutgoingMail)
        back = email.message_from_bytes(mail.as_bytes(), policy=email.policy.default)
        assert back["Subject"] == subject
