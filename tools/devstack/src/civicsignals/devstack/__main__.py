"""``python -m civicsignals.devstack run``: the same as the ``civicsignals-devstack`` script."""

from .cli import main

raise SystemExit(main())
