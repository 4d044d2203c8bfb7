"""One module per CLI command; `edgecls.cli` assembles them. Nothing imports this package but the CLI."""
