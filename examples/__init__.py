"""Example applications built with repom (``examples.bank_blog`` is the demo service)."""
