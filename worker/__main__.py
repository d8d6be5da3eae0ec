"""Allow ``python -m worker`` as an alias of the ``tailor`` command."""

from worker.cli import main

raise SystemExit(main())
