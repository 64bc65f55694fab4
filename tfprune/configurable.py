"""Objects described by their constructor arguments (criteria, granularities, scopes).

`get_config()` returns the arguments, `from_config(config)` calls the
constructor with them, and `repr` shows them, so error messages name an
object as it was written.

Example:
>>> class Cap(Configurable):
...     def __init__(self, limit=0.5):
...         self.limit = limit
...     def get_config(self):
...         return {"limit": self.limit}
>>> Cap.from_config({"limit": 0.9})
Cap(limit=0.9)
"""


class Configurable:
    """Base class: `get_config`, `from_config` and `repr` from the arguments."""

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"
