"""Reproducing published results: eval reports, recipe locks, golden losses."""
