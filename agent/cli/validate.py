"""`proconsul validate`: check config files without starting an agent."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from proconsul.agent.cli.output import fail


def validate(paths: Annotated[list[str], typer.Argument(help="Config files or directories.")],
             config_format: Annotated[str, typer.Option("--config-format", help="Read every file as json or hcl.")] = "",
             quiet: Annotated[bool, typer.Option("--quiet", help="Print nothing when the configuration is valid.")]
             = False) -> None:
    """Check config files as the agent would read them: keys, types, values and what cannot be honoured."""
    from proconsul.agent.config.load import finalize, load_config
    from proconsul.agent.config.model import AgentConfig, ConfigError

    files = [p for p in paths if not Path(p).is_dir()]
    dirs = [p for p in paths if Path(p).is_dir()]
    try:
        cfg = load_config(files, dirs, AgentConfig(data_dir=os.getcwd()), fmt=config_format.lower())
        finalize(cfg)
    except ConfigError as e:
        raise fail(str(e)) from None
    if not quiet:
        for warning in cfg.warnings:
            typer.echo(f"Warning: {warning}")
        typer.echo("Configuration is valid!")


def register(app: typer.Typer) -> None:
    app.command()(validate)
