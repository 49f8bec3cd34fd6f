"""The exit codes of `rayinfer` (and of a job's `JobOutcome.exit_code`)."""

#: every sample predicted and evaluated
EXIT_OK = 0
#: an unexpected error (a bug, a lost cluster, a failed download)
EXIT_ERROR = 1
#: a setup or configuration error, reported in one line before any work
EXIT_SETUP = 2
#: the job finished, some samples failed (OUTPUT/errors.parquet says which and why)
EXIT_PARTIAL = 3
#: shards were left unrun (no actor could come back); `--resume` runs them
EXIT_INCOMPLETE = 4
