"""``python -m autopar``: the command line."""

from .cli import main

raise SystemExit(main())
