"""Exceptions shared by the crypto modules (crypto.py re-exports CryptoError; kem.py raises it
too, and crypto.py builds kem.py's key exchanges, so the class lives below both)."""

from __future__ import annotations


class CryptoError(Exception):
    """Authentication tag mismatch, bad padding or an invalid peer public value."""
