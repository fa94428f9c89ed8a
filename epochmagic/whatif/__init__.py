"""The what-if layer: re-running the epoch under another setting.

``rerun`` and ``sweep`` (what a profile's ``Session`` calls for its
``SessionHandle``), the setting and its plan, the changes a setting makes
(rebuilt loaders, autocast, fused optimizers) and the magic's own first-run
setting. The copies of compiled code a what-if runs on belong to the session
(``epochmagic/session/compilecopies.py``). Imports every layer below it.
"""
