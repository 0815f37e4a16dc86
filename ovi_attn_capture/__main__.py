"""`python -m ovi_attn_capture ...` = `ovi-attn capture ...`, the form torchrun launches:

    torchrun --nproc-per-node 8 -m ovi_attn_capture prompts/ -o runs/
"""

import sys

from ovi_attn_render.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(args if args[:1] == ["capture"] else ["capture", *args]))
