"""The analysis layer: pure functions from a recorded run to numbers.

Events -> steps, phases, device time and GPU fields -> an ``EpochProfile``.
Imports the model and capture layers (for their record types).
"""
