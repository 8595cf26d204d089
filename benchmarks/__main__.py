import sys

from .cli import main_argv

if __name__ == "__main__":
    sys.exit(main_argv())
