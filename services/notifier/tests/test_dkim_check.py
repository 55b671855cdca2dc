"""``civicsignals-notifier dkim-check``: does the published DKIM record match notifier's key?

Against a real DNS server: dnslib's ``DNSServer`` on 127.0.0.1 (a UDP port the kernel picks),
serving the TXT records each test publishes, asked by the command through ``--nameserver`` with
dnspython as any resolver would be. Keys and records come from ``dkim-key`` itself where a test is
about the operator's steps (publishing what it prints, rotating to a new selector). The command
runs through ``main`` with argv, as ``dkim-key``'s test does. Then the record rules on their own,
with no server: ``parse_tags`` and ``assess_record``.
"""

from __future__ import annotations

import base64
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dnslib import QTYPE, RCODE, RR, TXT
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from civicsignals.notifier import dkimcheck, mailsigning
from civicsignals.notifier.cli import main

from .conftest import TENANT

SELECTOR = "civic2026"
NEXT_SELECTOR = "civic2027"
GOUDA_FROM = "Gemeente Gouda <meldingen@gouda.nl>"
NAME = f"{SELECTOR}._domainkey.gouda.nl"


# --- a real DNS server -----------------------------------------------------------------------------


@dataclass
class Zone(BaseResolver):
    """Answers TXT queries from ``records`` (name: a list of records, each a list of strings);
    a name not in it does not exist (NXDOMAIN), a name with ``[]`` exists without TXT."""

    records: dict[str, list[list[str]]] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    def publish(self, name: str, *records: list[str] | str) -> None:
        self.records[name] = [[record] if isinstance(record, str) else record for record in records]

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        self.asked.append(name)
        if name not in self.records:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.TXT:
            for strings in self.records[name]:
                rdata = TXT([string.encode("ascii") for string in strings])
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=rdata, ttl=60))
        return reply


@dataclass
class Dns:
    zone: Zone
    nameserver: str
    errors: list[str]


@pytest.fixture
def dns_server() -> Iterator[Dns]:
    zone = Zone()
    errors: list[str] = []
    server = DNSServer(zone, address="127.0.0.1", port=0, logger=DNSLogger(log="error", logf=errors.append))
    server.start_thread()
    host, port = server.server.server_address
    try:
        yield Dns(zone, f"{host}:{port}", errors)
    finally:
        server.stop()
        server.server.server_close()
    assert not errors, errors


# --- tenants, keys and the command ----------------------------------------------------------------


@dataclass
class Operator:
    """Runs the notifier command line for tenant gouda, as an operator would."""

    capsys: pytest.CaptureFixture[str]
    keys_dir: Path
    nameserver: str

    def run(self, *argv: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exited:
            main(list(argv))
        out, err = self.capsys.readouterr()
        return int(exited.value.code or 0), out, err

    def check(self, *extra: str, tenant: str = TENANT) -> tuple[int, str, str]:
        return self.run("dkim-check", "--tenant", tenant, "--nameserver", self.nameserver, *extra)

    def make_key(self, selector: str) -> list[str]:
        """``dkim-key --selector``; the TXT strings it prints for DNS, as they would be published."""
        code, out, _ = self.run("dkim-key", "--tenant", TENANT, "--selector", selector)
        assert code == 0
        return re.findall(r'"([^"]*)"', out)

    def key_pem(self, selector: str = SELECTOR) -> bytes:
        return mailsigning.load_key(mailsigning.key_path(self.keys_dir, TENANT, selector))


@pytest.fixture
def operator(
    make_tenant: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    dns_server: Dns,
) -> Operator:
    """Tenant gouda signing with ``civic2026`` (``mail.dkim``), its data dir under ``tmp_path``."""
    gouda = make_tenant(TENANT, settings={"mail": {"from": GOUDA_FROM, "dkim": {"selector": SELECTOR}}})
    monkeypatch.setenv("CIVIC_NOTIFIER_TENANTS_DIR", str(gouda.tenants_dir))
    monkeypatch.setenv("CIVIC_NOTIFIER_DATA_DIR", str(tmp_path / "data"))
    return Operator(capsys, tmp_path / "data" / "dkim", dns_server.nameserver)


def lines_of(out: str, level: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(level.upper())]


def record_of(pem: bytes) -> str:
    return mailsigning.dns_record(pem)


def assert_private_key_not_shown(operator: Operator, *outputs: str) -> None:
    pem = operator.key_pem().decode()
    body = [line for line in pem.splitlines() if not line.startswith("-----")]
    for output in outputs:
        assert "PRIVATE KEY" not in output
        assert not any(line in output for line in body)


# --- the command against a real DNS server ---------------------------------------------------------


def test_the_record_dkim_key_prints_passes_and_a_test_mail_verifies(
    operator: Operator, dns_server: Dns
) -> None:
    strings = operator.make_key(SELECTOR)
    assert len(strings) == 2, "a 2,048-bit key's record is more than one 255-byte string"
    dns_server.zone.publish(NAME, strings)

    code, out, err = operator.check()

    assert code == 0, out + err
    assert out.startswith(f"DKIM check of tenant {TENANT}: selector {SELECTOR}, domain gouda.nl")
    assert f"OK       record found at {NAME} (nameserver {dns_server.nameserver})" in out
    assert "in 2 TXT strings, joined" in out
    assert "OK       v=DKIM1" in out and "OK       k=rsa" in out
    assert "OK       the public key in DNS matches the private key file (2048-bit RSA)" in out
    verified = lines_of(out, "ok")[-1]
    assert verified.startswith("OK       verified: a test mail signed by notifier (d=gouda.nl, s=civic2026)")
    assert out.splitlines()[-1].startswith("RESULT   pass")
    assert not lines_of(out, "problem") and not lines_of(out, "warning")
    assert NAME in dns_server.zone.asked, "the command asked the given nameserver"
    assert_private_key_not_shown(operator, out, err)


def test_a_record_of_another_key_fails(operator: Operator, dns_server: Dns) -> None:
    operator.make_key(SELECTOR)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_pem = other.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    dns_server.zone.publish(NAME, re.findall(".{1,255}", record_of(other_pem)))

    code, out, err = operator.check()

    assert code == 1, out + err
    problems = lines_of(out, "problem")
    assert any("does not match the private key file" in line for line in problems)
    assert any(line.startswith("PROBLEM  not verified") for line in problems)
    assert out.splitlines()[-1].startswith("RESULT   fail")
    assert_private_key_not_shown(operator, out, err)


def test_a_name_that_does_not_exist_is_reported_as_not_found(operator: Operator, dns_server: Dns) -> None:
    operator.make_key(SELECTOR)
    code, out, _ = operator.check()
    assert code == 1
    assert lines_of(out, "problem") == [
        f"PROBLEM  record not found: {NAME} does not exist (NXDOMAIN, nameserver {dns_server.nameserver}); "
        "publish the TXT record that dkim-key prints"
    ]


def test_a_name_without_a_txt_record_and_a_server_that_does_not_answer_are_told_apart(
    operator: Operator, dns_server: Dns
) -> None:
    operator.make_key(SELECTOR)
    dns_server.zone.publish(NAME)  # the name exists, with no TXT record
    code, out, _ = operator.check()
    assert code == 1 and f"PROBLEM  record not found: {NAME} exists but holds no TXT record" in out

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        code, out, _ = operator.run(
            "dkim-check", "--tenant", TENANT, "--nameserver", f"127.0.0.1:{port}", "--timeout", "0.5"
        )
    assert code == 1
    assert f"PROBLEM  no answer (timeout): nameserver 127.0.0.1:{port} did not answer for {NAME}" in out
    assert "within 0.5 s" in out


def test_an_empty_p_says_the_key_is_revoked(operator: Operator, dns_server: Dns) -> None:
    operator.make_key(SELECTOR)
    dns_server.zone.publish(NAME, "v=DKIM1; k=rsa; p=")
    code, out, _ = operator.check()
    assert code == 1
    assert "PROBLEM  p= is empty: the key is revoked" in out
    assert any(line.startswith("PROBLEM  not verified") for line in lines_of(out, "problem"))


def test_a_record_split_anywhere_and_spaced_out_is_joined_and_passes(
    operator: Operator, dns_server: Dns
) -> None:
    """DNS hands over a long record as several strings, split wherever the zone's author split
    it (here inside the key), and RFC 6376 lets whitespace stand around tags and inside ``p=``."""
    operator.make_key(SELECTOR)
    record = record_of(operator.key_pem()).replace("; ", " ;\t ")
    key_start = record.index("p=") + 2
    split = key_start + 100
    spaced = record[:split] + " " + record[split:]
    dns_server.zone.publish(NAME, [spaced[:split], *re.findall(".{1,255}", spaced[split:] + " ;")])

    code, out, err = operator.check()

    assert code == 0, out + err
    assert "in 3 TXT strings, joined" in out
    assert "matches the private key file" in out and "OK       verified" in out


def test_t_y_passes_with_a_warning(operator: Operator, dns_server: Dns) -> None:
    operator.make_key(SELECTOR)
    dns_server.zone.publish(NAME, re.findall(".{1,255}", record_of(operator.key_pem()) + "; t=y"))
    code, out, _ = operator.check()
    assert code == 0
    assert [line[:16] for line in lines_of(out, "warning")] == ["WARNING  t=y: th"]
    assert out.splitlines()[-1] == (
        f"RESULT   pass: receivers can verify notifier's signatures for gouda.nl with selector {SELECTOR} "
        "(see the warnings above)"
    )


def test_an_h_tag_without_sha256_fails(operator: Operator, dns_server: Dns) -> None:
    operator.make_key(SELECTOR)
    record = record_of(operator.key_pem()).replace("k=rsa;", "k=rsa; h=sha1;")
    dns_server.zone.publish(NAME, re.findall(".{1,255}", record))
    code, out, _ = operator.check()
    assert code == 1 and "PROBLEM  h=sha1 excludes sha256" in out


def test_two_records_at_the_name_fail(operator: Operator, dns_server: Dns) -> None:
    """During a botched rotation someone adds a second record under the same selector."""
    strings = operator.make_key(SELECTOR)
    dns_server.zone.publish(NAME, strings, "v=DKIM1; k=rsa; p=")
    code, out, _ = operator.check()
    assert code == 1 and f"PROBLEM  2 TXT records at {NAME}" in out


def test_rotation_a_prepared_selector_is_checked_before_the_switch(
    operator: Operator, dns_server: Dns
) -> None:
    """The documented rotation: new key under a new selector, check it, only then switch."""
    dns_server.zone.publish(NAME, operator.make_key(SELECTOR))
    next_strings = operator.make_key(NEXT_SELECTOR)
    next_name = f"{NEXT_SELECTOR}._domainkey.gouda.nl"

    code, out, _ = operator.check("--selector", NEXT_SELECTOR)
    assert code == 1 and f"record not found: {next_name} does not exist" in out, "not published yet"

    dns_server.zone.publish(next_name, next_strings)
    code, out, err = operator.check("--selector", NEXT_SELECTOR)
    assert code == 0, out + err
    assert out.startswith(f"DKIM check of tenant {TENANT}: selector {NEXT_SELECTOR}")
    assert f"(d=gouda.nl, s={NEXT_SELECTOR})" in out
    assert lines_of(out, "note") == [
        f"NOTE     selector {NEXT_SELECTOR} is not mail.dkim.selector in tenant.yaml (now {SELECTOR}): "
        "notifier does not sign with it until you set it there, which is safe once this check passes"
    ]
    # The selector in force is still checked by default, and still passes.
    code, out, _ = operator.check()
    assert code == 0 and f"selector {SELECTOR}," in out and not lines_of(out, "note")


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--tenant", "nergens"], "no tenant 'nergens'"),
        (["--tenant", TENANT, "--selector", "civic2030"], "no key file"),
        (["--tenant", TENANT, "--selector", "Civic_2026"], "selector 'Civic_2026'"),
        (["--tenant", TENANT, "--nameserver", "127.0.0.1:99999"], "the port must be a number"),
    ],
    ids=["unknown-tenant", "missing-key-file", "bad-selector", "bad-nameserver"],
)
def test_a_check_that_cannot_run_exits_2_with_one_line(
    operator: Operator, dns_server: Dns, argv: list[str], reason: str
) -> None:
    operator.make_key(SELECTOR)
    code, out, err = operator.run("dkim-check", *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and reason in err
    assert not dns_server.zone.asked


def test_a_tenant_without_mail_dkim_needs_a_selector(
    make_tenant: Any, operator: Operator, dns_server: Dns
) -> None:
    make_tenant("woerden", settings={"mail": {"from": "Gemeente Woerden <info@woerden.nl>"}})
    code, out, err = operator.check(tenant="woerden")
    assert code == 2 and out == ""
    assert err.strip() == (
        "dkim-check: tenant 'woerden' has no mail.dkim.selector in tenant.yaml; give --selector to "
        "check a key made with dkim-key"
    )


# --- the record rules on their own ------------------------------------------------------------------


def test_parse_tags_follows_rfc_6376_tag_lists() -> None:
    assert dkimcheck.parse_tags(" v = DKIM1 ;k=rsa;\tp=AB CD ; ") == {"v": "DKIM1", "k": "rsa", "p": "AB CD"}
    assert dkimcheck.parse_tags("") == {}
    with pytest.raises(dkimcheck.RecordSyntaxError, match="occurs twice"):
        dkimcheck.parse_tags("p=A; p=B")
    with pytest.raises(dkimcheck.RecordSyntaxError, match="is not tag=value"):
        dkimcheck.parse_tags("v=DKIM1;; p=A")


def _pem(bits: int = 1024) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="module")
def pem() -> bytes:
    return _pem()


@pytest.mark.parametrize(
    ("record", "level", "words"),
    [
        ("v=DKIM2; p={p}", "problem", "v=DKIM2: receivers discard"),
        ("k=rsa; v=DKIM1; p={p}", "warning", "v=DKIM1 is not the first tag"),
        ("v=DKIM1; k=ed25519; p={p}", "problem", "k=ed25519: not an RSA key"),
        ("v=DKIM1; h=sha1:sha256; p={p}", "ok", "h=sha1:sha256 allows sha256"),
        ("v=DKIM1; s=tlsrpt; p={p}", "problem", "the key is not for e-mail"),
        ("v=DKIM1; t=s:y; p={p}", "warning", "t=y: the domain says it is testing"),
        ("v=DKIM1; k=rsa", "problem", "no p= tag"),
        ("v=DKIM1; p=not*base64", "problem", "p= is not valid base64"),
        ("v=DKIM1; p=AAAA", "problem", "p= holds no RSA public key"),
        ("v=DKIM1; p", "problem", "not a DKIM key record: 'p' is not tag=value"),
        ("v=DKIM1 p={p}", "problem", "v=DKIM1 p=MIGfMA0GCSq…: receivers discard"),
        ("p={p}", "ok", "no v= tag"),
    ],
)
def test_assess_record_names_what_is_wrong(pem: bytes, record: str, level: str, words: str) -> None:
    published = record_of(pem).partition("p=")[2]
    findings = dkimcheck.assess_record(record.format(p=published).encode(), pem)
    assert any(f.level == level and words in f.text for f in findings), findings


def test_a_record_in_pkcs1_form_is_read_as_receivers_read_it(pem: bytes) -> None:
    """Some zone tools publish the bare RSAPublicKey rather than SubjectPublicKeyInfo; dkimpy reads both."""
    key = serialization.load_pem_private_key(pem, password=None).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    findings = dkimcheck.assess_record(b"v=DKIM1; k=rsa; p=" + base64.b64encode(der), pem)
    assert dkimcheck.exit_code(findings) == 0
    assert findings[-1].text == "the public key in DNS matches the private key file (1024-bit RSA)"


def test_parse_nameserver_takes_host_and_port() -> None:
    assert dkimcheck.parse_nameserver("127.0.0.1") == dkimcheck.Nameserver("127.0.0.1", 53)
    assert dkimcheck.parse_nameserver("127.0.0.1:5353") == dkimcheck.Nameserver("127.0.0.1", 5353)
    assert dkimcheck.parse_nameserver("[::1]:5353") == dkimcheck.Nameserver("::1", 5353)
    assert dkimcheck.parse_nameserver("::1") == dkimcheck.Nameserver("::1", 53)
    assert str(dkimcheck.Nameserver("::1", 5353)) == "[::1]:5353"
    with pytest.raises(dkimcheck.NameserverProblem):
        dkimcheck.parse_nameserver(":53")
