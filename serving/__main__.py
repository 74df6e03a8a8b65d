"""`python -m serving FLAGS`: the TF-Serving-compatible model server (see serving/server.py)."""

import sys

from serving.server import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="python -m serving"))
