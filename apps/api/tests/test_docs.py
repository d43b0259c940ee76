"""The docs say what the code does: the settings README.md lists are real settings, and what plain
python-socketio gets wrong (the stock run's expected failures) is listed in the transport's README."""

from __future__ import annotations

import re

from apps.api.config import Settings
from apps.api.tests.support import REPO_ROOT, STOCK_DIFFERENCES


def test_every_stock_difference_is_listed_in_the_transport_readme():
    readme = (REPO_ROOT / "apps" / "transport" / "README.md").read_text()
    missing = [reason for reason in STOCK_DIFFERENCES.values() if f"- {reason}" not in readme]
    assert not missing, f"add to apps/transport/README.md's stock list: {missing}"


def test_every_setting_in_the_readme_configuration_table_is_a_setting():
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"^\| `([A-Z_]+)`(?:, `([A-Z_]+)`)?", table, flags=re.MULTILINE))
    listed = {name for pair in names for name in pair if name}
    assert {"CONNECT_TIMEOUT_SECONDS", "HTTP_HEADER_TIMEOUT_SECONDS", "WEBSOCKET_TRANSPORT"} <= listed
    assert listed <= {name.upper() for name in Settings.model_fields}, listed - {
        name.upper() for name in Settings.model_fields
    }
