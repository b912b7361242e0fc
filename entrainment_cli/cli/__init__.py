"""The Typer app: one module per command, options parsed into a typed config, no science."""
