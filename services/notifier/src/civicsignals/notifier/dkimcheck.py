"""Does the DKIM record a municipality published match the key notifier signs its mail with?

Why: notifier signs a tenant's mail (:mod:`civicsignals.notifier.mailsigning`) with a private key
only it holds, and a receiver checks the signature against the public key in DNS at
``<selector>._domainkey.<domain>``. Sending shows nothing of whether that record exists, is
written correctly or holds the same key: a wrong or missing record makes every mail fail DMARC
without one error on our side (Gmail and Outlook quarantine or reject it), and a key rotation done
in the wrong order does the same. ``civicsignals-notifier dkim-check`` therefore asks DNS as a
receiver would, reads the record's tags as RFC 6376 §3.6.1 defines them, compares its public key
with the key file, and finally signs a test mail with notifier's own signer and lets dkimpy's
``dkim.verify`` check it against the very answer DNS gave: proof that a receiver would accept it.

Plain functions and no framework: :func:`lookup_txt` is the one piece that needs a network;
everything else takes bytes and returns :class:`Finding` s, each one line an operator can read.
The private key is used to sign and to derive its public half; it is never printed.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message
from enum import StrEnum

import dkim
import dkim.crypto
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from civicsignals.notifier.mailsigning import MIN_KEY_BITS, DkimSigner
from civicsignals.notifier.messages import OutgoingMail, RenderedMessage, encode_email

DEFAULT_TIMEOUT_S = 5.0
"""How long one look-up may take: dkimpy's own default, so a slower answer is one receivers miss too."""
DNS_PORT = 53


class Level(StrEnum):
    """How a finding weighs: only a ``problem`` makes the check fail (exit 1)."""

    OK = "ok"
    NOTE = "note"
    WARNING = "warning"
    PROBLEM = "problem"


@dataclass(frozen=True)
class Finding:
    """One thing the check established, in words an operator without DKIM expertise follows."""

    level: Level
    text: str

    def line(self) -> str:
        return f"{self.level.upper():<8} {self.text}"


# --- asking DNS --------------------------------------------------------------------------------------


class Outcome(StrEnum):
    """What a TXT look-up came to; each is told apart because each has its own remedy."""

    FOUND = "found"
    NOT_FOUND = "not found"
    """NXDOMAIN: the name does not exist (nothing published, or a typo in the name)."""
    NO_TXT = "no TXT"
    """The name exists but holds no TXT record (say a CNAME to nowhere, or only another type)."""
    TIMEOUT = "timeout"
    FAILED = "failed"
    """SERVFAIL, refused, no resolver configured: the record's state is unknown."""


@dataclass(frozen=True)
class Nameserver:
    """A resolver to ask instead of the system's (``--nameserver HOST[:PORT]``)."""

    address: str
    port: int = DNS_PORT

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


class NameserverProblem(ValueError):
    """A ``--nameserver`` that is not ``HOST[:PORT]`` or whose host has no address."""


def parse_nameserver(text: str) -> Nameserver:
    """``HOST[:PORT]`` (``192.0.2.53``, ``ns1.gouda.nl:5353``, ``[2001:db8::53]:53``, ``::1``) as
    an address and port; a host name is looked up once here, since a resolver is asked by address."""
    text = text.strip()
    host, port_text = text, ""
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise NameserverProblem(f"nameserver {text!r}: write an IPv6 address as [address]:port")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    if not host:
        raise NameserverProblem(f"nameserver {text!r}: no host; give HOST or HOST:PORT")
    port = DNS_PORT
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise NameserverProblem(f"nameserver {text!r}: the port must be a number from 1 to 65535")
        port = int(port_text)
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as exc:
        raise NameserverProblem(f"nameserver {host!r} has no address: {exc}") from exc
    return Nameserver(address=str(addresses[0][4][0]), port=port)


@dataclass(frozen=True)
class TxtAnswer:
    """What DNS said about one name: its TXT records, each as the character strings it came in."""

    name: str
    asked: str
    """Whom we asked, for the report: ``nameserver 192.0.2.53:53`` or ``the system's resolver``."""
    outcome: Outcome
    records: tuple[tuple[bytes, ...], ...] = ()
    detail: str = ""

    @property
    def joined(self) -> list[bytes]:
        """Each record's strings joined, as RFC 6376 §3.6.2.2 has a verifier read a long key."""
        return [b"".join(strings) for strings in self.records]


def lookup_txt(name: str, nameserver: Nameserver | None, timeout_s: float = DEFAULT_TIMEOUT_S) -> TxtAnswer:
    """The TXT records at ``name``, asked of ``nameserver`` or else of the system's resolver.

    The name is taken as absolute (no search domains), as a receiver takes it; a CNAME is
    followed, as a receiver follows it. Nothing is raised: every way a look-up ends is an outcome.
    """
    asked = f"nameserver {nameserver}" if nameserver is not None else "the system's resolver"
    try:
        resolver = dns.resolver.Resolver(configure=nameserver is None)
    except dns.resolver.NoResolverConfiguration:
        return TxtAnswer(
            name, asked, Outcome.FAILED, detail="this machine has no resolver configured; give --nameserver"
        )
    if nameserver is not None:
        resolver.nameservers = [nameserver.address]
        resolver.port = nameserver.port
    resolver.timeout = timeout_s
    try:
        answer = resolver.resolve(
            dns.name.from_text(name),
            dns.rdatatype.TXT,
            lifetime=timeout_s,
            search=False,
            raise_on_no_answer=False,
        )
    except dns.resolver.NXDOMAIN:
        return TxtAnswer(name, asked, Outcome.NOT_FOUND)
    except dns.exception.Timeout:
        return TxtAnswer(name, asked, Outcome.TIMEOUT, detail=f"no answer within {timeout_s:g} s")
    except dns.resolver.NoNameservers:
        return TxtAnswer(
            name, asked, Outcome.FAILED, detail="the resolver answered with an error (SERVFAIL or REFUSED)"
        )
    except dns.exception.DNSException as exc:
        return TxtAnswer(name, asked, Outcome.FAILED, detail=str(exc) or type(exc).__name__)
    if answer.rrset is None:
        return TxtAnswer(name, asked, Outcome.NO_TXT)
    records = tuple(tuple(rdata.strings) for rdata in answer.rrset)
    return TxtAnswer(name, asked, Outcome.FOUND, records=records)


def answer_findings(answer: TxtAnswer) -> list[Finding]:
    """Whether the record is there, and if not, which of the ways it is missing."""
    if answer.outcome is Outcome.FOUND:
        records = answer.joined
        strings = sum(len(strings) for strings in answer.records)
        found = [
            Finding(
                Level.OK,
                f"record found at {answer.name} ({answer.asked}): {len(records[0])} characters "
                + (f"in {strings} TXT strings, joined" if strings > 1 else "in one TXT string"),
            )
        ]
        if len(records) > 1:
            found.append(
                Finding(
                    Level.PROBLEM,
                    f"{len(records)} TXT records at {answer.name}: a receiver uses any one of them, so "
                    "some mail fails; keep only the one record",
                )
            )
        return found
    text = {
        Outcome.NOT_FOUND: f"record not found: {answer.name} does not exist (NXDOMAIN, {answer.asked}); "
        "publish the TXT record that dkim-key prints",
        Outcome.NO_TXT: f"record not found: {answer.name} exists but holds no TXT record ({answer.asked})",
        Outcome.TIMEOUT: f"no answer (timeout): {answer.asked} did not answer for {answer.name}: "
        f"{answer.detail}; the record's state is unknown",
        Outcome.FAILED: f"the look-up of {answer.name} failed ({answer.asked}): {answer.detail}",
    }[answer.outcome]
    return [Finding(Level.PROBLEM, text)]


# --- reading the record ------------------------------------------------------------------------------


class RecordSyntaxError(ValueError):
    """A TXT value that is not a DKIM tag list; receivers ignore such a record as a whole."""


_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")


def parse_tags(record: str) -> dict[str, str]:
    """RFC 6376 §3.2's ``tag=value; tag=value;`` as a mapping, whitespace around each part dropped.

    A trailing ``;`` is allowed; a tag that occurs twice makes the whole list invalid (so says the
    RFC), as does a part without ``=``: dkimpy, like other receivers, then discards the record.
    """
    specs = record.split(";")
    if specs and not specs[-1].strip():
        specs.pop()
    tags: dict[str, str] = {}
    for spec in specs:
        name, equals, value = spec.partition("=")
        name = name.strip()
        if not equals or not _TAG_NAME.match(name):
            raise RecordSyntaxError(f"{spec.strip()!r} is not tag=value")
        if name in tags:
            raise RecordSyntaxError(f"the tag {name}= occurs twice, which makes the record invalid")
        tags[name] = value.strip()
    return tags


def _shown(value: str, limit: int = 24) -> str:
    """A tag's value as a report line quotes it: a long one (a key that swallowed the tags after
    it for want of a ``;``) cut short, so that the line stays one line."""
    return value if len(value) <= limit else value[: limit - 5] + "…"


def _listed(value: str) -> list[str]:
    """A colon-separated tag value (``h=``, ``s=``, ``t=``) with its whitespace dropped."""
    return [item.strip() for item in value.split(":") if item.strip()]


def assess_record(record: bytes, private_key_pem: bytes) -> list[Finding]:
    """The record's tags (RFC 6376 §3.6.1) judged for a signer that uses ``private_key_pem``
    with ``rsa-sha256``, in the order an operator would fix them."""
    try:
        tags = parse_tags(record.decode("ascii", errors="replace"))
    except RecordSyntaxError as exc:
        return [Finding(Level.PROBLEM, f"the record is not a DKIM key record: {exc}")]
    first_tag = next(iter(tags), None)
    return [
        *_version(tags, first_tag),
        *_key_type(tags),
        *_hash_algorithms(tags),
        *_service_types(tags),
        *_flags(tags),
        *_public_key(tags, private_key_pem),
    ]


def _version(tags: dict[str, str], first_tag: str | None) -> list[Finding]:
    if "v" not in tags:
        return [Finding(Level.OK, "no v= tag (it is optional; v=DKIM1 is usual)")]
    if tags["v"] != "DKIM1":
        return [
            Finding(
                Level.PROBLEM, f"v={_shown(tags['v'])}: receivers discard a key record whose v= is not DKIM1"
            )
        ]
    if first_tag != "v":
        return [
            Finding(
                Level.WARNING,
                "v=DKIM1 is not the first tag: RFC 6376 wants it first and a strict receiver ignores "
                "the record; put it first",
            )
        ]
    return [Finding(Level.OK, "v=DKIM1: a DKIM key record")]


def _key_type(tags: dict[str, str]) -> list[Finding]:
    key_type = tags.get("k", "rsa")
    if key_type != "rsa":
        return [
            Finding(
                Level.PROBLEM,
                f"k={_shown(key_type)}: not an RSA key, but notifier signs with RSA (rsa-sha256), so "
                "receivers cannot verify its mail",
            )
        ]
    stated = "k=rsa" if "k" in tags else "no k= tag (RSA, the default)"
    return [Finding(Level.OK, f"{stated}: an RSA key, as notifier signs with")]


def _hash_algorithms(tags: dict[str, str]) -> list[Finding]:
    if "h" not in tags:
        return []
    if "sha256" not in _listed(tags["h"]):
        return [
            Finding(
                Level.PROBLEM,
                f"h={_shown(tags['h'])} excludes sha256: receivers refuse notifier's rsa-sha256 signatures; "
                "drop h= or add sha256",
            )
        ]
    return [Finding(Level.OK, f"h={_shown(tags['h'])} allows sha256, which notifier signs with")]


def _service_types(tags: dict[str, str]) -> list[Finding]:
    if "s" not in tags or {"*", "email"} & set(_listed(tags["s"])):
        return []
    return [
        Finding(
            Level.PROBLEM,
            f"s={_shown(tags['s'])}: the key is not for e-mail, so receivers do not use it; drop s= or set s=email",
        )
    ]


def _flags(tags: dict[str, str]) -> list[Finding]:
    if "y" not in _listed(tags.get("t", "")):
        return []
    return [
        Finding(
            Level.WARNING,
            "t=y: the domain says it is testing DKIM, so receivers may treat a failing signature as no "
            "signature at all; remove t=y once this check passes",
        )
    ]


def _public_key(tags: dict[str, str], private_key_pem: bytes) -> list[Finding]:
    if "p" not in tags:
        return [Finding(Level.PROBLEM, "no p= tag: the record holds no public key (p= is required)")]
    encoded = re.sub(r"\s+", "", tags["p"])
    if not encoded:
        return [
            Finding(
                Level.PROBLEM,
                "p= is empty: the key is revoked, and receivers fail every signature with this selector",
            )
        ]
    try:
        published = dkim.crypto.parse_public_key(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError):
        return [Finding(Level.PROBLEM, "p= is not valid base64: receivers cannot read the key")]
    except (dkim.crypto.UnparsableKeyError, IndexError, TypeError):
        return [Finding(Level.PROBLEM, "p= holds no RSA public key that receivers can read")]
    bits = int(published["modulus"]).bit_length()
    ours = _public_numbers(private_key_pem)
    if (published["modulus"], published["publicExponent"]) != (ours.n, ours.e):
        return [
            Finding(
                Level.PROBLEM,
                f"the public key in DNS ({bits}-bit) does not match the private key file: every "
                "signature fails; publish the record dkim-key prints for this selector",
            )
        ]
    if bits < MIN_KEY_BITS:
        return [
            Finding(Level.PROBLEM, f"the key has {bits} bits; receivers ignore keys under {MIN_KEY_BITS}")
        ]
    return [Finding(Level.OK, f"the public key in DNS matches the private key file ({bits}-bit RSA)")]


def _public_numbers(private_key_pem: bytes) -> rsa.RSAPublicNumbers:
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError("DKIM keys of notifier are RSA keys")  # mailsigning.load_key refuses others
    return key.public_key().public_numbers()


# --- proving it with a signature ---------------------------------------------------------------------


def probe_mail(sender: str, domain: str, message_id_domain: str) -> Message | OutgoingMail:
    """A small mail from the tenant's own sender, built as notifier builds a resident's mail, so
    the signature verified below is made over the same kind of bytes real mail has."""
    return encode_email(
        RenderedMessage(
            subject="DKIM check",
            text="A test mail of civicsignals-notifier dkim-check; it is not sent.\n",
            html="<p>A test mail of civicsignals-notifier dkim-check; it is not sent.</p>",
        ),
        sender=sender,
        recipient=f"dkim-check@{domain}",
        message_id=f"dkim-check-{uuid.uuid4().hex}",
        domain=message_id_domain,
    )


class _Reasons(logging.Handler):
    """Keeps what dkimpy logs when a verification fails: it returns only ``False``."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def verify_test_mail(signer: DkimSigner, mail: Message | OutgoingMail, published: bytes) -> Finding:
    """Sign ``mail`` with notifier's signer and verify it with ``dkim.verify`` against ``published``
    (the record DNS returned), answering dkimpy's look-up of the signer's name with it alone."""
    try:
        signed = signer.sign(mail)
    except dkim.DKIMException as exc:
        return Finding(Level.PROBLEM, f"notifier could not sign a test mail with this key: {exc}")
    expected_name = signer.dns_name.lower()

    def answer_from_dns(name: bytes, timeout: float = DEFAULT_TIMEOUT_S) -> bytes | None:
        asked = name.decode("ascii", errors="replace").rstrip(".").lower()
        return published if asked == expected_name else None

    reasons = _Reasons()
    logger = logging.Logger("civicsignals.notifier.dkimcheck.verify", logging.ERROR)
    logger.addHandler(reasons)
    try:
        verified = bool(dkim.verify(signed.data, logger=logger, dnsfunc=answer_from_dns, minkey=MIN_KEY_BITS))
    except Exception as exc:  # dkimpy lets some malformed records through as other errors
        verified = False
        reasons.messages.append(str(exc) or type(exc).__name__)
    if verified:
        return Finding(
            Level.OK,
            f"verified: a test mail signed by notifier (d={signer.domain}, s={signer.selector}) passes "
            "DKIM verification against this record, as a receiver would check it",
        )
    reason = f" ({reasons.messages[-1]})" if reasons.messages else ""
    return Finding(
        Level.PROBLEM,
        f"not verified: a test mail signed by notifier fails DKIM verification against this record{reason}",
    )


def alignment_finding(from_domain: str, signing_domain: str) -> Finding | None:
    """A warning when DMARC would not count the signature: its domain is neither the From
    domain nor a parent of it (relaxed alignment). ``None`` when it aligns."""
    if from_domain == signing_domain or from_domain.endswith("." + signing_domain):
        return None
    return Finding(
        Level.WARNING,
        f"the signing domain {signing_domain} does not align with the From domain {from_domain}: "
        "the signature is valid, but DMARC does not count it",
    )


def check(
    signer: DkimSigner, answer: TxtAnswer, mail: Message | OutgoingMail, from_domain: str
) -> list[Finding]:
    """Everything the check says about one selector, given DNS's answer for it."""
    findings = answer_findings(answer)
    if answer.outcome is not Outcome.FOUND:
        return findings
    record = answer.joined[0]  # the one dkimpy's own look-up would take
    findings += assess_record(record, signer.key_pem)
    findings.append(verify_test_mail(signer, mail, record))
    aligned = alignment_finding(from_domain, signer.domain)
    if aligned is not None:
        findings.append(aligned)
    return findings


def exit_code(findings: Sequence[Finding]) -> int:
    """1 when any finding is a problem (receivers would refuse or not verify), else 0."""
    return 1 if any(finding.level is Level.PROBLEM for finding in findings) else 0


def verdict(findings: Sequence[Finding], signer: DkimSigner) -> str:
    """The last line: what the findings mean for the tenant's mail."""
    if exit_code(findings):
        return (
            f"RESULT   fail: mail signed with selector {signer.selector} would fail DKIM, and so DMARC, "
            f"at receivers for {signer.domain}; fix the problems above"
        )
    warned = " (see the warnings above)" if any(f.level is Level.WARNING for f in findings) else ""
    return (
        f"RESULT   pass: receivers can verify notifier's signatures for {signer.domain} "
        f"with selector {signer.selector}{warned}"
    )
