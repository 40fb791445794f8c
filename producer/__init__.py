"""The client side of pagewire: submit, status, results, the CLI."""
