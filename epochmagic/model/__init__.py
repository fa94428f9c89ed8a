"""The model layer: plain data every other layer speaks.

``EpochProfile`` and its records, ``PHASES`` and the what-if ``SETTINGS``
(vocabulary), ``THRESHOLDS`` (thresholds), typed event records (events), the
``gpu`` record (gpurecord), a compiled ``Cell`` (cell), and the registry through
which a profile's methods reach the report layer. Imports nothing internal.
"""
