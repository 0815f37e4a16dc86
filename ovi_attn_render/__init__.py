"""ovi_attn_render: the CPU side of ovi-attn. Reads capture files and renders them.

Never imports torch: it must run on a laptop where torch is not installed. The Python API
(docs/API.md): `open_capture(path) -> Capture` (maps as xarray DataArrays with named
dimensions) and `render(cap, view, out=None, **options)` (the CLI's pictures).
"""

__version__ = "0.1.0"
__all__ = ["Capture", "UserError", "open_capture", "render", "__version__"]


def __getattr__(name: str):
    # Loaded on first use, so that the CLI and the capture side, which import this package for
    # its errors, do not pay for xarray and h5py at start-up.
    if name in ("Capture", "open_capture", "render"):
        from ovi_attn_render import api

        return getattr(api, name)
    if name == "UserError":
        from ovi_attn_render.common.errors import UserError

        return UserError
    raise AttributeError(f"module 'ovi_attn_render' has no attribute {name!r}")
