"""The ``flare-nnsam`` command: one entry point for the project's commands."""
