"""Business packages. Each talks to the others only through events, never by import."""
