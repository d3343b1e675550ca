"""The forgetting benchmark: continual personalization on the shapes model (see benchmark.py)."""
