"""Test helpers: synthetic datasets, volumes in real formats, plans dicts, nnU-Net checkpoint reading
and the installed commands (``tests/conftest.py`` puts ``tests/`` on ``sys.path``)."""
