"""Speed benchmarks: the runner and the Markdown/SVG report."""
