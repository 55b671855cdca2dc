"""Each municipality's own sender: ``mail.from`` and ``mail.reply_to`` in ``tenant.yaml``.

End to end with the real intake, NATS and notifier, and an SMTP server (aiosmtpd on loopback)
that keeps each mail's envelope as well as its bytes: the From and Reply-To headers a resident
sees, the envelope sender (MAIL FROM) SPF is checked against, names outside ASCII as a mail
client decodes them, and a change of ``tenant.yaml`` taking effect (or being refused) while
notifier runs. Then the rules on their own: the default sender, the schema, the fast encoding.
"""

from __future__ import annotations

import email
import email.policy
import logging
import os
import random
import re
import time
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtplib.email import flatten_message

from civicsignals.common.tenant_schemas import check_folder
from civicsignals.common.tenants import Tenant, TenantRegistry
from civicsignals.notifier import messages

from .conftest import FRYSLAN, MAIL_FROM, TENANT


def header_line(data: bytes, name: str) -> bytes:
    """A header as it went over the wire, its folded lines joined."""
    found = re.search(
        rb"^" + name.encode() + rb": ([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", data, re.MULTILINE | re.IGNORECASE
    )
    assert found is not None, f"no {name} header"
    return found.group(1)


# --- end to end ------------------------------------------------------------------------------------


async def test_without_mail_settings_the_tenants_name_is_the_sender_at_the_configured_address(
    start: Any, wait_until: Any
) -> None:
    stack = await start(name="Gemeente Gouda")
    mail = await stack.acknowledgement(wait_until)
    message = mail.parsed()
    assert message["From"] == "Gemeente Gouda <noreply@civic.example>"
    assert "Reply-To" not in message
    assert mail.mail_from == "noreply@civic.example" and mail.rcpt_tos == ["anna@example.org"]


async def test_the_tenants_own_sender_and_reply_to_are_the_headers_and_the_envelope(
    start: Any, wait_until: Any
) -> None:
    stack = await start(
        name="Gemeente Gouda",
        mail={"from": "Gemeente Gouda <meldingen@gouda.nl>", "reply_to": "klantcontact@gouda.nl"},
    )
    mail = await stack.acknowledgement(wait_until)
    message = mail.parsed()
    assert header_line(mail.data, "From") == b"Gemeente Gouda <meldingen@gouda.nl>"
    assert header_line(mail.data, "Reply-To") == b"klantcontact@gouda.nl"
    assert message.get_all("From") == ["Gemeente Gouda <meldingen@gouda.nl>"]
    assert message.get_all("Reply-To") == ["klantcontact@gouda.nl"]
    # MAIL FROM is the tenant's own address, so its domain's SPF record is the one checked.
    assert mail.mail_from == "meldingen@gouda.nl" and mail.rcpt_tos == ["anna@example.org"]


@pytest.mark.parametrize(
    ("mail_settings", "sender", "address", "reply_to"),
    [
        pytest.param(
            {
                "from": f"{FRYSLAN} <meldingen@sudwestfryslan.nl>",
                "reply_to": f"Klantcontact {FRYSLAN} <klantcontact@sudwestfryslan.nl>",
            },
            FRYSLAN,
            "meldingen@sudwestfryslan.nl",
            ("Klantcontact " + FRYSLAN, "klantcontact@sudwestfryslan.nl"),
            id="own-sender",
        ),
        pytest.param(None, FRYSLAN, "noreply@civic.example", None, id="tenant-name"),
    ],
)
async def test_a_name_outside_ascii_is_encoded_and_reads_back_as_written(
    start: Any,
    wait_until: Any,
    mail_settings: dict[str, str] | None,
    sender: str,
    address: str,
    reply_to: tuple[str, str] | None,
) -> None:
    stack = await start(name=FRYSLAN, mail=mail_settings)
    mail = await stack.acknowledgement(wait_until)
    assert mail.data.isascii(), "headers as encoded words, the body quoted-printable"
    assert b"=?utf-8?" in header_line(mail.data, "From")
    message = mail.parsed()
    [mailbox] = message["From"].addresses
    assert (mailbox.display_name, mailbox.addr_spec) == (sender, address)
    assert str(message["From"]) == f"{sender} <{address}>"
    assert mail.mail_from == address
    if reply_to is None:
        assert "Reply-To" not in message
    else:
        [replies] = message["Reply-To"].addresses
        assert (replies.display_name, replies.addr_spec) == reply_to


def _rewrite(path: Path, settings: dict[str, Any] | str) -> None:
    text = settings if isinstance(settings, str) else yaml.safe_dump(settings, allow_unicode=True)
    path.write_text(text, encoding="utf-8")
    stamp = time.time_ns() + 1_000_000_000  # a modification time that moves even on coarse clocks
    os.utime(path, ns=(stamp, stamp))


async def test_a_changed_sender_applies_from_the_next_mail_and_a_refused_one_keeps_the_last_good(
    start: Any, wait_until: Any
) -> None:
    stack = await start(name="Gemeente Gouda")
    first = await stack.acknowledgement(wait_until, "een@example.org")
    assert first.mail_from == "noreply@civic.example"

    tenant_yaml = stack.tenant.folder / "tenant.yaml"
    own = {"from": "Gemeente Gouda <meldingen@gouda.nl>", "reply_to": "klantcontact@gouda.nl"}
    _rewrite(tenant_yaml, {"name": "Gemeente Gouda", "languages": ["nl", "en"], "mail": own})
    tenants = stack.notifier.runtime.tenants

    def reloaded() -> bool:
        tenant = tenants.get(TENANT)
        return tenant is not None and tenant.settings.get("mail") == own

    await wait_until(reloaded, timeout=10, message="notifier to load the new tenant.yaml")
    second = await stack.acknowledgement(wait_until, "twee@example.org")
    assert second.parsed()["From"] == "Gemeente Gouda <meldingen@gouda.nl>"
    assert second.parsed()["Reply-To"] == "klantcontact@gouda.nl"
    assert second.mail_from == "meldingen@gouda.nl"

    _rewrite(tenant_yaml, "name: Gemeente Gouda\nmail:\n  from: Gemeente Gouda\n")

    def refused() -> bool:
        tenants.get(TENANT)  # a look-up is what makes the registry check its folders
        return TENANT in tenants.errors

    await wait_until(refused, timeout=10, message="the change to be refused")
    assert "tenant.yaml line 3" in tenants.errors[TENANT] and "/mail/from" in tenants.errors[TENANT]
    third = await stack.acknowledgement(wait_until, "drie@example.org")
    assert third.parsed()["From"] == "Gemeente Gouda <meldingen@gouda.nl>"
    assert third.mail_from == "meldingen@gouda.nl"


# --- the schema ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "Gemeente Gouda <meldingen@gouda.nl>",
        "meldingen@gouda.nl",
        '"Gemeente, Gouda" <meldingen@gouda.nl>',
        f"{FRYSLAN} <meldingen@sudwestfryslan.nl>",
        "Demo (gemeente) <noreply@demo.example>",
        None,
    ],
)
def test_the_schema_takes_one_address_with_or_without_a_name(make_tenant: Any, value: str | None) -> None:
    gouda = make_tenant(TENANT, settings={"mail": {"from": value, "reply_to": value}})
    assert check_folder(gouda.folder).issues == []


@pytest.mark.parametrize(
    ("mail", "pointer"),
    [
        ({"from": "Gemeente Gouda"}, "/mail/from"),
        ({"from": "meldingen@gouda.nl, kcc@gouda.nl"}, "/mail/from"),
        ({"from": "Gemeente, Gouda <meldingen@gouda.nl>"}, "/mail/from"),
        ({"from": "Gemeente Gouda <meldingen@gouda.nl>\nBcc: x@example.org"}, "/mail/from"),
        ({"reply_to": "klantcontact"}, "/mail/reply_to"),
        ({"sender": "meldingen@gouda.nl"}, "/mail"),
    ],
)
def test_the_schema_refuses_what_is_not_one_address(
    make_tenant: Any, mail: dict[str, str], pointer: str
) -> None:
    gouda = make_tenant(TENANT, settings={"mail": mail})
    [issue] = check_folder(gouda.folder).issues
    assert issue.pointer == pointer and issue.file.name == "tenant.yaml"


def test_an_invalid_sender_is_refused_with_the_file_and_line_and_the_last_good_one_stays(
    make_tenant: Any,
) -> None:
    gouda = make_tenant(TENANT, name="Gemeente Gouda", settings={"mail": {"from": "meldingen@gouda.nl"}})
    registry = TenantRegistry(gouda.tenants_dir, check_interval_s=0)
    tenant_yaml = gouda.folder / "tenant.yaml"
    _rewrite(
        tenant_yaml, "name: Gemeente Gouda\nmail:\n  reply_to: klantcontact@gouda.nl\n  from: gouda.nl\n"
    )
    tenant = registry.get(TENANT)
    assert tenant is not None and messages.sender_of(tenant, MAIL_FROM).mail_from == "meldingen@gouda.nl"
    error = registry.errors[TENANT]
    assert "tenant.yaml line 4" in error and "/mail/from" in error
    [issue] = registry.issues[TENANT]
    assert (issue.line, issue.pointer) == (4, "/mail/from")


# --- the rules on their own ----------------------------------------------------------------------


def _tenant(name: str = "Gemeente Gouda", **mail: Any) -> Tenant:
    settings: dict[str, Any] = {"name": name}
    if mail:
        settings["mail"] = mail
    return Tenant(code=TENANT, folder=Path("/nonexistent"), settings=settings)


def test_the_default_sender_is_the_tenants_name_and_an_unknown_tenant_gets_the_setting_unchanged() -> None:
    assert messages.sender_of(None, MAIL_FROM) == messages.Sender(MAIL_FROM)
    sender = messages.sender_of(_tenant("Demo (gemeente)"), MAIL_FROM)
    assert parseaddr(sender.mail_from) == ("Demo (gemeente)", "noreply@civic.example")
    assert sender.reply_to is None
    quoted = messages.sender_of(_tenant('Gemeente "Oud"\nGouda'), "noreply@civic.example")
    assert parseaddr(quoted.mail_from) == ('Gemeente "Oud" Gouda', "noreply@civic.example")
    own = messages.sender_of(
        _tenant(**{"from": "meldingen@gouda.nl", "reply_to": "KCC <kcc@gouda.nl>"}), MAIL_FROM
    )
    assert own == messages.Sender("meldingen@gouda.nl", '"KCC" <kcc@gouda.nl>')


@pytest.mark.parametrize(
    "value",
    ["Gemeente, Gouda <meldingen@gouda.nl>", "a@gouda.nl, b@gouda.nl", "gouda.nl", 42, "x@y\nBcc: z@w"],
)
def test_a_sender_the_schema_did_not_stop_falls_back_with_a_warning_naming_only_the_tenant(
    value: object, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="civicsignals.notifier.messages"):
        sender = messages.sender_of(_tenant(**{"from": value, "reply_to": value}), MAIL_FROM)
    assert sender == messages.Sender('"Gemeente Gouda" <noreply@civic.example>')
    assert [record.getMessage() for record in caplog.records] == [
        f"tenant {TENANT}: mail.from in tenant.yaml is not one usable address; using the default",
        f"tenant {TENANT}: mail.reply_to in tenant.yaml is not one usable address; using the default",
    ]
    assert "@" not in caplog.text


# --- the fast encoding with Reply-To -------------------------------------------------------------

_DATE = re.compile(rb"^Date: .*$", re.MULTILINE)
RENDERED = messages.RenderedMessage(
    subject="Uw melding (7KQ2-M9XD-4HTC)", text="Dank u.\néén\n", html="<p>één</p>"
)


@pytest.mark.parametrize(
    ("sender", "reply_to"),
    [
        ('"Súdwest-Fryslân" <sf@sf.example>', "Klantcontact Fryslân <kc@sf.example>"),
        ('"Gemeente Gouda" <meldingen@gouda.nl>', "klantcontact@gouda.nl"),
        ("meldingen@gouda.nl", '"KCC, Gouda" <kcc@gouda.nl>'),
    ],
)
def test_a_mail_with_reply_to_written_directly_is_byte_for_byte_what_the_generator_writes(
    sender: str, reply_to: str
) -> None:
    mail: dict[str, Any] = {
        "sender": sender,
        "recipient": "anna@example.org",
        "message_id": "m",
        "domain": "g.example",
        "reply_to": reply_to,
    }
    random.seed(7)
    direct = messages.encode_email(RENDERED, **mail)
    assert isinstance(direct, messages.OutgoingMail)
    assert direct.sender == parseaddr(sender)[1] and direct.recipients == ["anna@example.org"]
    random.seed(7)
    built = messages.build_email(RENDERED, **mail)
    assert _DATE.sub(b"", direct.data) == _DATE.sub(b"", flatten_message(built))
    back = email.message_from_bytes(direct.data, policy=email.policy.default)
    assert parseaddr(str(back["Reply-To"])) == parseaddr(reply_to)


def test_a_long_name_or_a_mailbox_outside_ascii_in_reply_to_goes_through_the_generator() -> None:
    long_sender = f'"{FRYSLAN}" <meldingen@sudwestfryslan.nl>'
    mail = messages.encode_email(
        RENDERED,
        sender=long_sender,
        recipient="a@example.org",
        message_id="m",
        domain="g",
        reply_to="kcc@x.nl",
    )
    assert not isinstance(mail, messages.OutgoingMail)
    back = email.message_from_bytes(mail.as_bytes(), policy=email.policy.default)
    assert str(back["From"]) == f"{FRYSLAN} <meldingen@sudwestfryslan.nl>" and back["Reply-To"] == "kcc@x.nl"

    modern = messages.encode_email(
        RENDERED,
        sender="g@x.nl",
        recipient="a@example.org",
        message_id="m",
        domain="g",
        reply_to="jé@voorbeeld.nl",
    )
    assert modern.__class__.__name__ == "EmailMessage"
    assert modern["Reply-To"].addresses[0].addr_spec == "jé@voorbeeld.nl"
    resident = messages.encode_email(
        RENDERED,
        sender=long_sender,
        recipient="jé@voorbeeld.nl",
        message_id="m",
        domain="g",
        reply_to="k@x.nl",
    )
    assert resident.__class__.__name__ == "EmailMessage"
    assert resident["To"].addresses[0].addr_spec == "jé@voorbeeld.nl" and resident["Reply-To"] == "k@x.nl"
