"""Entry points and the pipeline: the scheduler, the driver, the CLI, offline evaluation, benchmarks."""
