"""The command line: typer wiring only. The library never imports this package."""
