"""One module per ``build.py`` subcommand; see factory/cli/main.py for the contract."""
