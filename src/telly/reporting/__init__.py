"""The study report: the paper's tables and figures regenerated from this pipeline's results,
its published numbers beside them, and each of its claims checked on this run (docs/report.md)."""
