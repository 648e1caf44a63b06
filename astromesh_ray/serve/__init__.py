"""Ray bodies for the core interfaces: provider and agent deployments, the gateway,
and the application builders that ``serve deploy`` calls by ``import_path``."""
