"""Detectors: each reads its rule file from rules/ and turns features into verdicts."""
