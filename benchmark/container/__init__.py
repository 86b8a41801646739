"""Measurements of the container as the organisers run it: a fresh process per case,
wall-clock time, memory polled from outside, where a case's time goes (start-up, stages)."""
