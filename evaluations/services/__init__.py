"""Evaluations business logic: datasets and cases, evaluation runs, comparison, the deploy gate."""
