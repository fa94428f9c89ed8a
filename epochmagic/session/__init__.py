"""The session layer: the shell, the cell and running it safely.

One ``Session.run(mode)`` runs the cell for the magic's measurement, a traced
line-attribution run or a what-if, with one snapshot and cleanup path.
Imports every layer below it.
"""
