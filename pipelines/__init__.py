"""crmscore batch jobs and command-line interface."""
