"""The online service (FastAPI): serves models:/<name>@champion and follows the alias."""
