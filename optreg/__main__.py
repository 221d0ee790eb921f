"""``python -m optreg`` is the ``optreg`` command."""

from optreg.cli import main

raise SystemExit(main())
