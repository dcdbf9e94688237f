"""The ``vlens`` command line: thin typer wrappers over the library (one module per verb group)."""
