"""CLI sub-commands, one module each (see ttgraph.cli)."""
