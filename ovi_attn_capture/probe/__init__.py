"""Capture probes: exact maps from q, k and the kernel's log-sum-exp."""
