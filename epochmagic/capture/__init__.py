"""The capture layer: what runs while the user's cell runs.

The probes (one module per target), the event recorder, the CUDA and host
clocks, the torch.compile watch, and ``patching``, the only module that
patches and restores anything global or the user's. Imports only the model.
"""
