"""The CLI's commands, one module per stage, each a thin layer over library code that lists its click commands
and groups in `COMMANDS` (`flywheel.cli` registers them). `options` holds what they share."""
