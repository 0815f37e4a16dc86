"""ovi_attn_render: the CPU side of ovi-attn. Reads capture files and renders them.

Never imports torch: it must run on a laptop where torch is not installed.
"""

__version__ = "0.1.0"
