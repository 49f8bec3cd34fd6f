"""`python -m rayinfer.jobs` is the `rayinfer` command."""

from rayinfer.jobs.cli import main

raise SystemExit(main())
