"""Ground floor: types, errors, SSE decoding, HTTP plumbing, logging. Private API."""
