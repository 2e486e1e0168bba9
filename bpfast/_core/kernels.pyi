# The compiled module, typed loosely for type checkers: its entry points check their
# arguments at run time.
from typing import Any

def __getattr__(name: str) -> Any: ...
