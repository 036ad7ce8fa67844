"""marionet.endpoint."""
