"""Flow-matching schedulers and the two-tower sampling loop."""
