"""The accounts domain as a module-level instance, for `tidings --domain tests.engine.accounts_app`."""

from tests.engine.accounts import build_accounts

domain = build_accounts()
