"""Measurements of the network alone: tiles per second under each engine and execution
mode, operations launched per batch, candidate preset sizes, untrained weights to time them."""
