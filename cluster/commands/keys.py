"""`flowrouter keys new | list | revoke | hash`: API keys in the service's key file.

The running service re-reads the key file when it changes (auth.reload_interval_s), so keys made or
revoked here take effect without a restart. Only hashes are stored; `new` prints the key once.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import sys
from pathlib import Path

from cluster.cli import CliError
from core.auth_config import ApiKeySpec
from core.config import ConfigError, load_config


def register(sub) -> None:
    p = sub.add_parser("keys", help="API keys: create, list, revoke (rotation without restart)")
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION")
    ksub.required = True

    def where(parser):
        parser.add_argument("--config", help="config YAML whose key file to use (default: configs/default.yaml)")
        parser.add_argument("--file", help="key file to use instead of the config's")

    n = ksub.add_parser("new", help="create a key, store its hash in the key file, print the key once")
    n.add_argument("id", help="who holds the key (lowercase letters, digits, . _ -)")
    n.add_argument("--role", choices=["ticket", "admin"], required=True)
    n.add_argument("--rate", type=int, help="requests per minute (default: auth.default_rate_per_minute; 0: none)")
    n.add_argument("--burst", type=int, help="requests at once before the rate applies")
    n.add_argument("--comment", default="", help="what the key is for")
    n.add_argument("--webhook-url", help="POST the finished workflows of this key's async tickets here")
    n.add_argument("--webhook-format", choices=["json", "slack"], help="webhook body (default: webhooks.format)")
    n.add_argument("--webhook-secret-env", metavar="VAR", help="environment variable holding this key's webhook "
                   "signing secret (kept out of the shell history; default: the webhooks section's secret)")
    where(n)
    n.set_defaults(func=cmd_new)

    ls = ksub.add_parser("list", help="list key ids and roles in the key file (never the keys)")
    where(ls)
    ls.set_defaults(func=cmd_list)

    r = ksub.add_parser("revoke", help="remove a key from the key file")
    r.add_argument("id")
    where(r)
    r.set_defaults(func=cmd_revoke)

    h = ksub.add_parser("hash", help="hash a key or secret read from stdin (for auth.keys in a config or the "
                                     "FLOWROUTER_API_KEYS variable)")
    h.add_argument("--scrypt", action="store_true", help="scrypt (for human-chosen secrets) instead of sha256")
    h.set_defaults(func=cmd_hash)


def key_file_for(args) -> Path:
    if getattr(args, "file", None):
        return Path(args.file)
    from cluster import local
    from deployments.auth import default_key_file

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    cfg = local.resolve_state_dir(cfg)
    return Path(default_key_file(cfg.auth, cfg.serve.state_dir))


def cmd_new(args) -> int:
    from deployments.auth import KeyFile, new_key, sha256_hash

    key = new_key()
    secret = None
    if args.webhook_secret_env:
        secret = os.environ.get(args.webhook_secret_env, "").strip()
        if not secret:
            raise CliError(f"${args.webhook_secret_env} is empty or not set")
    try:
        spec = ApiKeySpec(id=args.id, role=args.role, hash=sha256_hash(key), rate_per_minute=args.rate,
                          burst=args.burst, comment=args.comment,
                          created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                          webhook_url=args.webhook_url, webhook_format=args.webhook_format, webhook_secret=secret)
    except ValueError as exc:
        raise CliError(str(exc).splitlines()[-1] if str(exc) else "invalid key") from None
    path = key_file_for(args)
    try:
        KeyFile(path).add(spec)
    except KeyError:
        raise CliError(f"{path} already has a key {args.id!r}: revoke it first, or pick another id") from None
    except ValueError as exc:
        raise CliError(f"{path} is invalid, not changed: {exc}") from None
    print(f"created {args.role} key {args.id!r} in {path} (live in a running service within seconds)")
    print("the key (shown once, store it now):")
    print(key)
    return 0


def cmd_list(args) -> int:
    from deployments.auth import KeyFile

    path = key_file_for(args)
    try:
        specs = KeyFile(path).read()
    except ValueError as exc:
        raise CliError(str(exc)) from None
    if not specs:
        print(f"no keys in {path}")
        return 0
    print(f"{len(specs)} keys in {path}:")
    for s in specs:
        rate = "default" if s.rate_per_minute is None else ("unlimited" if s.rate_per_minute == 0
                                                             else f"{s.rate_per_minute}/min")
        print(f"  {s.id:<24} {s.role:<7} rate {rate:<10} created {s.created or '?'}  {s.comment}")
    return 0


def cmd_revoke(args) -> int:
    from deployments.auth import KeyFile

    path = key_file_for(args)
    try:
        KeyFile(path).revoke(args.id)
    except LookupError:
        raise CliError(f"no key {args.id!r} in {path}") from None
    except ValueError as exc:
        raise CliError(f"{path} is invalid, not changed: {exc}") from None
    print(f"revoked {args.id!r} from {path}")
    return 0


def cmd_hash(args) -> int:
    from deployments.auth import scrypt_hash, sha256_hash

    secret = getpass.getpass("key or secret: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if not secret:
        raise CliError("nothing to hash")
    print(scrypt_hash(secret) if args.scrypt else sha256_hash(secret))
    return 0
