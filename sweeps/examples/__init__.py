"""Example sweep specs and a toy job function."""
