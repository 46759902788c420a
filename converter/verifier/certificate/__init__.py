"""The structural certificate: translation validation of each rewritten graph against its original.

walk.py holds the walk and the facts it keeps; integer.py proves the integer layers. Shares no code with
``converter.rewriter`` (a lint rule in pyproject.toml holds that).
"""
