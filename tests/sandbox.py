"""The contained runner the rewrite and mutant tests check programs with (it lives in telly.sandbox)."""

from telly.sandbox import passes, run_contained

__all__ = ["passes", "run_contained"]
