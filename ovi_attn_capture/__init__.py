"""ovi_attn_capture: the GPU side of ovi-attn (model, components, sampler, capture, writer)."""

__version__ = "0.1.0"
