"""DKIM signatures (RFC 6376) on a municipality's mail, made by notifier itself.

Why: a mail ``From: meldingen@gouda.nl`` passes the domain's DMARC policy only when it carries a
valid DKIM signature of that domain (or SPF of the envelope sender aligns). Many municipalities
send through a relay that signs for them; those that hand notifier a plain SMTP relay (or one
shared with other senders) need notifier to sign, as FixMyStreet does. So a tenant may name a
selector in ``tenant.yaml``::

    mail:
      from: "Gemeente Gouda <meldingen@gouda.nl>"
      dkim:
        selector: civic2026          # the public key is published at civic2026._domainkey.gouda.nl
        domain: gouda.nl             # optional; default: the domain of the From address

and the private key lies in ``<CIVIC_NOTIFIER_DKIM_KEYS_DIR>/<tenant>/<selector>.pem`` (a secret,
never in the tenant's folder). ``civicsignals-notifier dkim-key`` makes one and prints the DNS
record to publish. The signing itself is dkimpy's (``rsa-sha256``, ``relaxed/relaxed``, the From
header signed twice so that no second From can be added); this module only finds the key, checks
it once per version of the tenant's folder, and puts the signature on the bytes that go to the
relay. A tenant whose key is missing or unusable is warned about (naming the file, never the key)
and its mail goes out unsigned, as it did before, rather than not at all.
"""

from __future__ import annotations

import base64
import logging
import os
import re
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import dkim
from aiosmtplib.email import extract_recipients, extract_sender, flatten_message
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from civicsignals.common.tenants import Tenant
from civicsignals.notifier.messages import OutgoingMail

log = logging.getLogger(__name__)

KEY_BITS = 2048
"""RFC 8301: signers use at least 1,024 bits and should use 2,048; receivers may ignore less."""
MIN_KEY_BITS = 1024
CANONICALIZATION = (b"relaxed", b"relaxed")
"""``relaxed`` headers and body survive relays that re-fold headers or trim trailing blanks."""
SELECTOR = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
"""A selector as notifier takes it: one DNS label, lower case (also the key file's name)."""


class DkimKeyProblem(ValueError):
    """A key file that is missing, unreadable, not RSA or too short (the message names the file)."""


@dataclass(frozen=True)
class DkimSigner:
    """One tenant's signing identity: ``d=`` (``domain``), ``s=`` (``selector``) and its key."""

    domain: str
    selector: str
    key_pem: bytes
    """PKCS #1 PEM, the one form dkimpy reads (a PKCS #8 file is converted when loaded)."""

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def sign(self, mail: Message | OutgoingMail) -> OutgoingMail:
        """The mail in its wire form with a ``DKIM-Signature`` header in front.

        A :class:`Message` (a mail whose headers needed encoding) is first flattened exactly as
        the SMTP client would have flattened it, so the signed bytes are the sent bytes.
        """
        wire = wire_form(mail)
        data = wire.data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # as the SMTP client sends it
        signature = dkim.sign(
            data,
            self.selector.encode("ascii"),
            self.domain.encode("ascii"),
            self.key_pem,
            canonicalize=CANONICALIZATION,
        )
        return OutgoingMail(
            sender=wire.sender, recipients=wire.recipients, data=signature + data, utf8=wire.utf8
        )


def wire_form(mail: Message | OutgoingMail) -> OutgoingMail:
    """``mail`` as the bytes and envelope aiosmtplib's ``send_message`` would send.

    The envelope comes from the headers (From, To), as there; a mailbox outside ASCII needs the
    relay's SMTPUTF8 (``utf8``) and a generator that writes UTF-8 headers. Every part notifier
    writes is quoted-printable, so no relay has to convert an 8-bit body (which would break the
    signature).
    """
    if isinstance(mail, OutgoingMail):
        return mail
    sender = extract_sender(mail)
    recipients = extract_recipients(mail)
    if sender is None or not recipients:
        raise ValueError("a mail without From or To cannot be sent")
    utf8 = not (sender.isascii() and all(address.isascii() for address in recipients))
    data = flatten_message(mail, utf8=utf8 and isinstance(mail, EmailMessage), cte_type="7bit")
    return OutgoingMail(sender=sender, recipients=recipients, data=data, utf8=utf8)


def domain_of(address: str) -> str:
    """The domain of a mailbox (``"Gemeente Gouda <meldingen@gouda.nl>"``: ``gouda.nl``), or ``""``."""
    return parseaddr(address)[1].rpartition("@")[2].lower()


def key_path(keys_dir: Path, tenant: str, selector: str) -> Path:
    return keys_dir / tenant / f"{selector}.pem"


def signer_of(tenant: Tenant | None, keys_dir: Path, mail_from: str) -> DkimSigner | None:
    """The tenant's signer from ``mail.dkim`` in its ``tenant.yaml``, or ``None`` (unsigned mail).

    ``mail_from`` is the sender its mail goes out with (``messages.sender_of``): without
    ``mail.dkim.domain`` the signing domain is that address's, and a domain the From address is
    neither at nor under would not align under DMARC, so it is warned about (the mail is still
    signed: a receiver may value a valid signature of another domain). The key is loaded and
    tried once here, so a broken key shows when the tenant is loaded, not in every mail's retry.
    """
    if tenant is None:
        return None
    mail = tenant.settings.get("mail")
    config: Any = mail.get("dkim") if isinstance(mail, dict) else None
    if not isinstance(config, dict) or not config.get("selector"):
        return None
    selector = str(config["selector"])
    from_domain = domain_of(mail_from)
    domain = str(config.get("domain") or from_domain).lower().rstrip(".")
    if not SELECTOR.match(selector) or not domain:
        log.warning(
            "tenant %s: mail.dkim has no usable selector or domain; its mail goes unsigned", tenant.code
        )
        return None
    path = key_path(keys_dir, tenant.code, selector)
    try:
        signer = DkimSigner(domain=domain, selector=selector, key_pem=load_key(path))
        signer.sign(OutgoingMail(sender=f"check@{domain}", recipients=[], data=_PROBE))
    except (DkimKeyProblem, dkim.DKIMException) as exc:
        log.warning("tenant %s: DKIM key not usable (%s); its mail goes unsigned", tenant.code, exc)
        return None
    if from_domain != domain and not from_domain.endswith("." + domain):
        log.warning(
            "tenant %s: mail.dkim.domain %s does not align with the From domain %s under DMARC",
            tenant.code,
            domain,
            from_domain,
        )
    return signer


_PROBE = b"From: check@example.org\nTo: check@example.org\nSubject: check\n\ncheck\n"


def load_key(path: Path) -> bytes:
    """The RSA private key in ``path`` (PKCS #1 or PKCS #8 PEM, unencrypted) as PKCS #1 PEM."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DkimKeyProblem(f"cannot read {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError) as exc:
        raise DkimKeyProblem(f"{path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise DkimKeyProblem(f"{path} is not an RSA key (DKIM's rsa-sha256 needs one)")
    if key.key_size < MIN_KEY_BITS:
        raise DkimKeyProblem(f"{path} has {key.key_size} bits; DKIM needs at least {MIN_KEY_BITS}")
    return _pkcs1(key)


def new_key(path: Path, bits: int = KEY_BITS) -> bytes:
    """A fresh RSA key written to ``path`` (readable by its owner only); its PKCS #1 PEM.

    Raises :class:`FileExistsError` rather than replace a key whose public half may be in DNS.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = _pkcs1(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(pem)
    return pem


def dns_record(key_pem: bytes) -> str:
    """The TXT record's value that publishes the public half of ``key_pem`` (RFC 6376 §3.6.1)."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode("ascii")


def zone_line(name: str, record: str) -> str:
    """``record`` as a zone-file line: a TXT string holds at most 255 bytes, so a 2,048-bit key's
    record is split into several quoted strings, which DNS joins again."""
    chunks = " ".join(f'"{record[i : i + 255]}"' for i in range(0, len(record), 255))
    return f"{name}. IN TXT ( {chunks} )"


def _pkcs1(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
