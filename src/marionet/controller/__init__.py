"""marionet.controller."""
