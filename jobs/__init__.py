"""Entry points and the pipeline: the loader stage, the driver, the CLI, offline evaluation, benchmarks."""
