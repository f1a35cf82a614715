"""Thin Lambda entry points: parse the event, call one automation, return. No business logic here."""
