"""ovi_attn_capture: the GPU side of ovi-attn (model, components, sampler, capture, writer).

The Python API (docs/API.md): `capture(prompt, output, **overrides) -> CaptureSummary`.
"""

__version__ = "0.1.0"

from ovi_attn_capture.api import capture  # noqa: E402  (imports nothing heavy until called)

__all__ = ["capture", "__version__"]
