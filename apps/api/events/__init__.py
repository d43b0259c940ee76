"""Server-side event publishing (``get_broadcaster``).

The card imports ``events.broadcaster`` with ``apps/api`` as the working directory. When this
package is imported under that short name, it makes ``events`` and ``events.broadcaster`` aliases
of ``apps.api.events`` and ``apps.api.events.broadcaster``, so there is one module, one
broadcaster, and one set of classes per process however the code was imported.
"""

if __name__ == "events":  # pragma: no cover - exercised in a subprocess by the tests
    import importlib
    import sys
    from pathlib import Path

    _root = str(Path(__file__).resolve().parents[3])
    if _root not in sys.path:
        sys.path.insert(0, _root)
    sys.modules["events"] = importlib.import_module("apps.api.events")
    sys.modules["events.broadcaster"] = importlib.import_module("apps.api.events.broadcaster")
