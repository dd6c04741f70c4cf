"""Performance benchmark (docs/benchmarks.md): ``measure`` holds the code under measurement and the timers, ``run``
the configuration check, the phases (``run.run_benchmark``) and the report."""
