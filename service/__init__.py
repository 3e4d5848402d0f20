"""The HTTP service (FastAPI): chat and summarize routes. Built in issue #4."""
