"""Built-in real datasets that ship with installed packages (no download at run time)."""
from bigtrain.data import *  # noqa: F401,F403
from bigtrain.data import __all__  # noqa: F401
