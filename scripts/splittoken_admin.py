"""Administer a splittoken store, also while mitmdump runs on it.

    python scripts/splittoken_admin.py --store DIR|redis://… stats
    python scripts/splittoken_admin.py --store DIR|redis://… purge
    python scripts/splittoken_admin.py --store DIR|redis://… revoke HANDLE
    python scripts/splittoken_admin.py --store DIR|redis://… show HANDLE

Records are sealed under their handles: without a handle nothing but counts can be read, and nothing here
ever prints a token. ``show`` needs the handle and prints only its kind, subject and expiry.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "addons"))

from splittoken.errors import SplitTokenError
from splittoken.store import open_store
from splittoken.vault import Vault, describe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", required=True, help="directory or redis:// URL, as splittoken_store")
    parser.add_argument("--timeout", type=float, default=2.0, help="store timeout in seconds")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("stats", help="count records, and expired ones not yet purged")
    commands.add_parser("purge", help="drop expired records now")
    commands.add_parser("revoke", help="forget a handle: refused from now on").add_argument("handle")
    commands.add_parser("show", help="kind, subject and expiry of a handle").add_argument("handle")
    args = parser.parse_args(argv)

    try:
        vault = Vault(open_store(args.store, timeout=args.timeout))
        try:
            return run(vault, args.command, getattr(args, "handle", "").strip())
        finally:
            vault.close()
    except (SplitTokenError, ValueError) as e:  # unreachable, or a store URL that is not one
        print(f"store unavailable: {e}", file=sys.stderr)
        return 2


def run(vault: Vault, command: str, handle: str) -> int:
    if command == "stats":
        print(describe(vault.stats_now()))
    elif command == "purge":
        print(f"purged {vault.purge_now()} expired record(s)")
    elif command == "revoke":
        if not vault.forget_now(handle):
            print("no such handle")
            return 1
        print("revoked")
    else:
        record = vault.find_now(handle)
        if record is None:
            print("no such handle (unknown, expired or revoked)")
            return 1
        expires = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(record.expires_at))
        print(f"kind={record.kind} subject={record.subject or '-'} expires={expires}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
