"""Second floor: routing, retries, fallback and health. Private API."""
