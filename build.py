#!/usr/bin/env python3
"""Flower appliance factory command line. See README.md, or run ``python build.py --help``."""

import sys

from factory.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
