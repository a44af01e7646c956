"""The `tracker` command's exit codes (documented in README, "CLI")."""

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOT_FOUND = 1, 2, 3, 4
