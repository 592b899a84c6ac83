"""Example applications built on Tidings."""
