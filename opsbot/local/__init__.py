"""The local embedded AWS: moto in server mode on loopback, a seeded fleet and a Slack stand-in."""
