"""``python -m llava_mini.backbones``: build the tiny backbones (see llava_mini.backbones.build)."""

from llava_mini.backbones.build import main

if __name__ == "__main__":
    main()
