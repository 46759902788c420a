"""Verification: the structural certificate (certificate/), each layer's and every output's numbers
(numbers/), the inputs chosen to expose layout bugs (inputs.py), and onnxruntime sessions (sessions.py);
run.py orchestrates them. Nothing here imports ``converter.rewriter``: what is checked shares no code
with what checks it (a lint rule in pyproject.toml holds that).
"""

from converter.verifier.certificate import discover
from converter.verifier.run import DEFAULT_MAX_MEMORY, DEFAULT_TIMEOUT, verify, verify_reference

__all__ = ["DEFAULT_MAX_MEMORY", "DEFAULT_TIMEOUT", "discover", "verify", "verify_reference"]
