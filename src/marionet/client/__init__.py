"""marionet.client."""
