"""Model monitoring: reference profiles, window metrics, drift and quality, and the retraining decision."""
