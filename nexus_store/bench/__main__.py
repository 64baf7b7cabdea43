"""``python -m nexus_store.bench [--quick] [--only ...]``: the same as ``nexus-store bench``."""

from ._run import main

raise SystemExit(main())
