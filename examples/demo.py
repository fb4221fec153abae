"""Ask the shipped toy VisualRWKV about images, offline, watching the answers stream in.

    python examples/demo.py                                   # a few held-out ShapesVQA images
    python examples/demo.py --image my.png --question "How many circles are there?"
    python examples/demo.py --num-images 8 --output-dir /tmp/demo

The same as ``rwkv-vision demo``; see ``rwkv_vision/demo.py`` for what is printed and written.
"""

import sys

from rwkv_vision.demo import main

if __name__ == "__main__":
    sys.exit(main())
