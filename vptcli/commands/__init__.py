"""One module per CLI command: a plain typed function and ``register(app)``."""


def param_source(ctx, name: str) -> str:
    """Where parameter ``name`` of the running command got its value: ``"COMMANDLINE"``,
    ``"ENVIRONMENT"``, ``"DEFAULT"``, ... or ``""`` when unknown. Compared by name, because Typer may
    bundle its own click, whose ``ParameterSource`` is not the installed click's."""
    return getattr(ctx.get_parameter_source(name), "name", "")
