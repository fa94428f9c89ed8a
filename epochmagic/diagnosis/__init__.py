"""The diagnosis layer: findings, their evidence and predicted savings.

Rules read ``epochmagic.model.thresholds.THRESHOLDS`` at call time; predictions
of what-ifs live here too. Imports model, capture and analysis.
"""
