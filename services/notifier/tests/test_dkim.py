"""DKIM: notifier signs a municipality's mail with the municipality's own key (``mail.dkim``).

End to end with the real intake, NATS and notifier and an SMTP server (aiosmtpd on loopback): the
acknowledgement arrives with a ``DKIM-Signature`` that dkimpy verifies over the bytes the relay
received, and a changed header or body no longer verifies. The public key is what
``civicsignals-notifier dkim-key`` prints for DNS. DNS itself is outside the project and cannot run
here, so the verifier's look-up goes through dkimpy's own hook (``dnsfunc``), which answers the one
name a receiver would ask for with that record and fails on any other. Then the rules on their own:
keys that are missing, short, PKCS #8 or not RSA; DMARC alignment; the command; the schema.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from civicsignals.common.tenant_schemas import check_folder
from civicsignals.common.tenants import Tenant
from civicsignals.notifier import mailsigning, messages
from civicsignals.notifier.cli import main

from .conftest import FRYSLAN, TENANT

SELECTOR = "civic2026"
GOUDA_FROM = "Gemeente Gouda <meldingen@gouda.nl>"


def published(name: str, record: str) -> Callable[..., bytes]:
    """dkimpy's DNS hook answering ``name`` (a TXT look-up) with ``record``, and nothing else."""
    asked: list[bytes] = []

    def lookup(qname: bytes, timeout: int = 5) -> bytes:
        asked.append(qname)
        assert qname.decode().rstrip(".") == name, f"looked up {qname!r}, not {name}"
        return record.encode()

    lookup.asked = asked  # type: ignore[attr-defined]
    return lookup


def key_file(tmp_path: Path, selector: str = SELECTOR) -> Path:
    """Where the notifier of ``start`` (data dir ``tmp_path/notifier-data``) looks for the key."""
    return mailsigning.key_path(tmp_path / "notifier-data" / "dkim", TENANT, selector)


def signature_tags(data: bytes) -> dict[str, str]:
    found = re.search(rb"^DKIM-Signature: (.*?)\r\n(?! )", data, re.MULTILINE | re.DOTALL)
    assert found is not None, "no DKIM-Signature header"
    value = re.sub(r"\s+", "", found.group(1).decode())
    return dict(tag.split("=", 1) for tag in value.split(";") if tag)


# --- end to end ------------------------------------------------------------------------------------


async def test_the_acknowledgement_is_signed_for_the_municipalitys_domain_and_verifies(
    start: Any, wait_until: Any, tmp_path: Path
) -> None:
    pem = mailsigning.new_key(key_file(tmp_path))
    stack = await start(name="Gemeente Gouda", mail={"from": GOUDA_FROM, "dkim": {"selector": SELECTOR}})
    mail = await stack.acknowledgement(wait_until)

    tags = signature_tags(mail.data)
    assert (tags["d"], tags["s"], tags["a"], tags["c"]) == (
        "gouda.nl",
        SELECTOR,
        "rsa-sha256",
        "relaxed/relaxed",
    )
    signed = tags["h"].lower().split(":")
    assert {"from", "to", "subject", "date", "message-id", "mime-version", "content-type"} <= set(signed)
    assert signed.count("from") == 2, "From is signed once more than it occurs, so none can be added"

    lookup = published(f"{SELECTOR}._domainkey.gouda.nl", mailsigning.dns_record(pem))
    assert dkim.verify(mail.data, dnsfunc=lookup)
    assert lookup.asked  # type: ignore[attr-defined]
    # A receiver refuses a mail whose signed header or body changed on the way.
    assert not dkim.verify(
        mail.data.replace(b"meldingen@gouda.nl", b"meldingen@gouda.nl.example"), dnsfunc=lookup
    )
    assert not dkim.verify(mail.data + b"Bel ons op 0182 123456.\r\n", dnsfunc=lookup)
    assert mail.mail_from == "meldingen@gouda.nl"


async def test_a_mail_with_encoded_headers_is_signed_as_it_was_sent(
    start: Any, wait_until: Any, tmp_path: Path
) -> None:
    """A name outside ASCII makes notifier build the mail with the ``email`` package (the other
    path): what is signed must still be the bytes the relay receives."""
    pem = mailsigning.new_key(key_file(tmp_path))
    sender = f"{FRYSLAN} <meldingen@sudwestfryslan.nl>"
    stack = await start(name=FRYSLAN, mail={"from": sender, "dkim": {"selector": SELECTOR}})
    mail = await stack.acknowledgement(wait_until)
    assert b"=?utf-8?" in mail.data.split(b"\r\n\r\n", 1)[0]
    assert signature_tags(mail.data)["d"] == "sudwestfryslan.nl"
    lookup = published(f"{SELECTOR}._domainkey.sudwestfryslan.nl", mailsigning.dns_record(pem))
    assert dkim.verify(mail.data, dnsfunc=lookup)
    assert str(mail.parsed()["From"]) == sender


async def test_without_its_key_file_the_tenants_mail_still_goes_unsigned(start: Any, wait_until: Any) -> None:
    """The warning that names the file is checked below (``missing``); here, that mail still goes."""
    stack = await start(name="Gemeente Gouda", mail={"from": GOUDA_FROM, "dkim": {"selector": SELECTOR}})
    mail = await stack.acknowledgement(wait_until)
    assert b"DKIM-Signature" not in mail.data
    assert mail.parsed()["From"] == GOUDA_FROM and mail.mail_from == "meldingen@gouda.nl"


# --- the rules on their own ------------------------------------------------------------------------


def _tenant(**mail: Any) -> Tenant:
    return Tenant(code=TENANT, folder=Path("/nonexistent"), settings={"name": "Gemeente Gouda", "mail": mail})


def _mail() -> messages.OutgoingMail:
    rendered = messages.RenderedMessage(
        subject="Uw melding (7KQ2-M9XD-4HTC)", text="Dank u.\n", html="<p>Dank u.</p>"
    )
    mail = messages.encode_email(
        rendered, sender=GOUDA_FROM, recipient="anna@example.org", message_id="m1", domain="civic.example"
    )
    assert isinstance(mail, messages.OutgoingMail)
    return mail


def _write(path: Path, key: Any, form: serialization.PrivateFormat) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption()))


def test_a_pkcs8_key_as_openssl_genpkey_writes_it_signs_as_well(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write(mailsigning.key_path(tmp_path, TENANT, SELECTOR), key, serialization.PrivateFormat.PKCS8)
    signer = mailsigning.signer_of(
        _tenant(**{"from": GOUDA_FROM, "dkim": {"selector": SELECTOR}}), tmp_path, GOUDA_FROM
    )
    assert signer is not None and signer.dns_name == f"{SELECTOR}._domainkey.gouda.nl"
    signed = signer.sign(_mail())
    record = mailsigning.dns_record(signer.key_pem)
    assert dkim.verify(signed.data, dnsfunc=published(signer.dns_name, record))
    assert (signed.sender, signed.recipients) == ("meldingen@gouda.nl", ["anna@example.org"])


def _short_key() -> rsa.RSAPrivateKey:
    """A 648-bit key (Mersenne primes 2**521 - 1 and 2**127 - 1): too short for DKIM, and shorter
    than ``cryptography`` is willing to generate."""
    p, q, e = 2**521 - 1, 2**127 - 1, 65537
    d = pow(e, -1, (p - 1) * (q - 1))
    public = rsa.RSAPublicNumbers(e, p * q)
    return rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), public).private_key()


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (_short_key, "has 648 bits"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), "is not an RSA key"),
        (None, "cannot read"),
    ],
    ids=["short", "not-rsa", "missing"],
)
def test_an_unusable_key_leaves_the_mail_unsigned_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, make: Callable[[], Any] | None, problem: str
) -> None:
    path = mailsigning.key_path(tmp_path, TENANT, SELECTOR)
    if make is not None:
        _write(path, make(), serialization.PrivateFormat.PKCS8)
    with caplog.at_level(logging.WARNING, logger="civicsignals.notifier.mailsigning"):
        signer = mailsigning.signer_of(_tenant(dkim={"selector": SELECTOR}), tmp_path, GOUDA_FROM)
    assert signer is None
    assert problem in caplog.text and str(path) in caplog.text
    assert "BEGIN" not in caplog.text


def test_a_signing_domain_the_from_address_does_not_align_with_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mailsigning.new_key(mailsigning.key_path(tmp_path, TENANT, SELECTOR))
    with caplog.at_level(logging.WARNING, logger="civicsignals.notifier.mailsigning"):
        parent = mailsigning.signer_of(
            _tenant(dkim={"selector": SELECTOR, "domain": "gouda.nl"}), tmp_path, "meldingen@mail.gouda.nl"
        )
        assert parent is not None and caplog.text == ""  # a parent domain aligns (relaxed DMARC)
        other = mailsigning.signer_of(
            _tenant(dkim={"selector": SELECTOR, "domain": "civic.example"}), tmp_path, GOUDA_FROM
        )
    assert other is not None and other.domain == "civic.example"
    assert "does not align with the From domain gouda.nl" in caplog.text
    assert mailsigning.signer_of(_tenant(**{"from": GOUDA_FROM}), tmp_path, GOUDA_FROM) is None


def test_an_smtputf8_mail_is_signed_over_its_utf8_headers() -> None:
    """A resident's mailbox outside ASCII: the mail goes with SMTPUTF8 and is still signed whole."""
    rendered = messages.RenderedMessage(subject="Uw melding", text="Dank u, één.\n", html="<p>één</p>")
    mail = messages.encode_email(
        rendered, sender=GOUDA_FROM, recipient="jürgen@example.org", message_id="m2", domain="civic.example"
    )
    assert not isinstance(mail, messages.OutgoingMail)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    signer = mailsigning.DkimSigner(domain="gouda.nl", selector=SELECTOR, key_pem=pem)
    signed = signer.sign(mail)
    assert signed.utf8 and signed.recipients == ["jürgen@example.org"]
    assert "jürgen@example.org".encode() in signed.data
    assert b"Content-Transfer-Encoding: quoted-printable" in signed.data
    assert dkim.verify(signed.data, dnsfunc=published(signer.dns_name, mailsigning.dns_record(pem)))


# --- the command -----------------------------------------------------------------------------------


def test_dkim_key_writes_a_private_key_once_and_prints_the_record_that_verifies_its_signatures(
    make_tenant: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gouda = make_tenant(TENANT, settings={"mail": {"from": GOUDA_FROM}})
    monkeypatch.setenv("CIVIC_NOTIFIER_TENANTS_DIR", str(gouda.tenants_dir))
    monkeypatch.setenv("CIVIC_NOTIFIER_DATA_DIR", str(tmp_path / "data"))

    def run(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exited:
            main(["dkim-key", "--tenant", TENANT, *args])
        out, err = capsys.readouterr()
        return int(exited.value.code or 0), out, err

    code, out, err = run("--selector", SELECTOR)
    path = tmp_path / "data" / "dkim" / TENANT / f"{SELECTOR}.pem"
    assert code == 0 and "wrote a new 2048-bit key" in err
    assert path.stat().st_mode & 0o777 == 0o600
    assert out.startswith(f"{SELECTOR}._domainkey.gouda.nl. IN TXT ( ")
    record = "".join(re.findall(r'"([^"]*)"', out))
    assert all(len(chunk) <= 255 for chunk in re.findall(r'"([^"]*)"', out))
    first = path.read_bytes()

    code, again, err = run("--selector", SELECTOR)
    assert code == 0 and "kept the existing key" in err
    assert again == out and path.read_bytes() == first

    signer = mailsigning.DkimSigner(domain="gouda.nl", selector=SELECTOR, key_pem=first)
    assert dkim.verify(signer.sign(_mail()).data, dnsfunc=published(signer.dns_name, record))

    assert run("--selector", "Civic_2026")[0] == 2
    with pytest.raises(SystemExit) as unknown:
        main(["dkim-key", "--tenant", "nergens"])
    assert unknown.value.code == 2 and "no tenant 'nergens'" in capsys.readouterr().err


# --- the schema ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dkim_settings", "pointer"),
    [
        ({"selector": SELECTOR}, None),
        ({"selector": "s1", "domain": "mail.gouda.nl"}, None),
        ({"selector": "Civic_2026"}, "/mail/dkim/selector"),
        ({"domain": "gouda.nl"}, "/mail/dkim"),
        ({"selector": SELECTOR, "domain": "gouda"}, "/mail/dkim/domain"),
        ({"selector": SELECTOR, "key": "-----BEGIN"}, "/mail/dkim"),
    ],
)
def test_the_schema_takes_a_selector_and_an_optional_domain(
    make_tenant: Any, dkim_settings: dict[str, str], pointer: str | None
) -> None:
    gouda = make_tenant(TENANT, settings={"mail": {"from": GOUDA_FROM, "dkim": dkim_settings}})
    issues = check_folder(gouda.folder).issues
    assert [issue.pointer for issue in issues] == ([] if pointer is None else [pointer])
