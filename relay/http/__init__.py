"""The admin HTTP listener: its JSON API, authentication and the OpenAPI document."""
