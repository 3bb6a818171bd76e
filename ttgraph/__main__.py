"""``python -m ttgraph`` is the ``ttgraph`` command."""

from ttgraph.cli import main

raise SystemExit(main())
