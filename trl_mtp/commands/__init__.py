"""One module per `trl-mtp` subcommand, each with `main(argv) -> int`."""
