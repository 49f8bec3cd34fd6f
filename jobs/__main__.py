"""`python -m jobs` is the `rayinfer` command."""

from jobs.cli import main

raise SystemExit(main())
