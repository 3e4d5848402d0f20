"""The shipped evaluation suites; `python -m evals.build` writes their cases from the data."""
