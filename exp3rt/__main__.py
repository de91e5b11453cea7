"""``python -m exp3rt``: the same as ``exp3rt-pipeline``."""

from exp3rt.cli.pipeline import main

if __name__ == "__main__":
    main()
