"""The report layer: text, HTML, charts, trace and the widget dashboard.

It renders a profile and never recomputes its numbers. Imports every layer
below it (the dashboard's what-if panel calls the what-if layer).
"""
