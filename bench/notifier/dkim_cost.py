"""What a DKIM signature costs notifier per mail, beside building the same mail, in the same run.

A resident's acknowledgement is built the way notifier builds it (``messages.encode_email``:
the reference) and then signed as a tenant with ``mail.dkim`` has it signed
(``mailsigning.DkimSigner.sign``: dkimpy, RSA in Python, a 2,048-bit key as ``dkim-key`` makes).
Printed: microseconds of CPU per mail for each, one thread, the lowest of three rounds. (Not
named ``dkim.py``: run as a script, its folder comes first on the path and would hide dkimpy.)

    .venv/bin/python bench/notifier/dkim_cost.py [--mails 200]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from civicsignals.notifier import mailsigning, messages

RENDERED = messages.RenderedMessage(
    subject="Uw melding is ontvangen (7KQ2-M9XD-4HTC)",
    text="Beste A. de Vries,\n\nDank u voor uw melding. " * 8,
    html="<p>Beste A. de Vries,</p><p>Dank u voor uw melding.</p>" * 8,
)


def build() -> messages.OutgoingMail:
    mail = messages.encode_email(
        RENDERED,
        sender="Gemeente Gouda <meldingen@gouda.nl>",
        recipient="anna@example.org",
        message_id="bench",
        domain="civicsignals.local",
    )
    assert isinstance(mail, messages.OutgoingMail)
    return mail


def cpu_us_per_call(work: Callable[[], object], count: int) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for _ in range(count):
            work()
        best = min(best, (time.process_time() - started) / count)
    return 1e6 * best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mails", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        pem = mailsigning.new_key(Path(folder) / "civic2026.pem")
    signer = mailsigning.DkimSigner(domain="gouda.nl", selector="civic2026", key_pem=pem)
    mail = build()
    building = cpu_us_per_call(build, args.mails)
    signing = cpu_us_per_call(lambda: signer.sign(mail), args.mails)
    print(f"{args.mails} mails, one thread, lowest of three rounds (CPU time):")
    print(f"  build the mail (encode_email, the reference)  {building:8.0f} us")
    print(
        f"  DKIM-sign it (rsa-sha256, 2,048 bits)          {signing:8.0f} us  ({signing / building:.0f}x the build)"
    )


if __name__ == "__main__":
    main()
