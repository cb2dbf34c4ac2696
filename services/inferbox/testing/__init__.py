"""Helpers shared by the test suite, the benchmark and the local stack's demo repository."""
