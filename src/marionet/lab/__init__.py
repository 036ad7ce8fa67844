"""marionet.lab."""
