"""The engine: pipelines over captures (replay) and live interfaces (run), one writer."""
