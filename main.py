"""fairq entry point: ``python main.py --phase baseline|quantization|mitigation|analysis|all``."""
import sys

from fairq.cli import main

if __name__ == "__main__":
    sys.exit(main())
