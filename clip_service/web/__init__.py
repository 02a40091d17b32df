"""The HTTP layer: blueprints (thin views), schemas, the OpenAPI document, error rendering, JSON I/O."""
