"""Civic Signals on one machine: the pieces behind ``make run`` and the cross-service tests.

- :mod:`.nats` — a real ``nats-server`` with JetStream (``NatsServer``, ``find_nats_server``);
- :mod:`.mailcatcher` — SMTP that stores every message as an ``.eml`` file (``MailCatcher``);
- :mod:`.gateway` — the local entry point routing by path prefix (``create_gateway``);
- :mod:`.supervisor` — named child processes with readiness checks (``ProcessSupervisor``);
- :mod:`.ports` — free and preferred local ports (``free_port``);
- :mod:`.cli` — ``civicsignals-devstack run`` (``SERVICES``, ``service_env``).

Nothing is imported here, so that importing one piece (say the mail catcher in a test) does not
pull in the others' dependencies.
"""
