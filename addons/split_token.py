"""Split Token Flow for mitmproxy: ``mitmdump -s addons/split_token.py``.

Clients get opaque handles instead of JWT access tokens; the proxy re-joins them on the way to the API.
See README.md. This script stays thin: the package beside it does the work.
"""

import sys

# mitmproxy's hot reload watches only this file and would keep the package cached: drop it, so that
# touching this script reloads everything.
for _name in [m for m in sys.modules if m == "splittoken" or m.startswith("splittoken.")]:
    del sys.modules[_name]

from splittoken.addon import SplitToken  # noqa: E402
from splittoken.view import SplitTokenView  # noqa: E402

addons = [SplitToken(), SplitTokenView()]
