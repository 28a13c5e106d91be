"""Commands built on the harness: suites, publishing, prediction, the memory table."""
