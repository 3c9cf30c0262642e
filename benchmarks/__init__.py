"""The ggl-bench harness: suites, runner, results store, reports, submissions, priors and speed benchmarks."""
