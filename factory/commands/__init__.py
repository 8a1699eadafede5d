"""One module per ``build.py`` subcommand; see factory/cli.py for the contract."""
