"""The service's own embedding API: POST /embed/text, /embed/image and /embed/mixed."""
