"""`proconsul k8s-sync [purge] [flags]`: the Kubernetes syncer, a separate process (proconsul.k8s_sync).

The flags are parsed by k8s_sync itself (consul-k8s's, with one dash or two), so `proconsul k8s-sync` and
`python -m proconsul.k8s_sync` take exactly the same ones.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("k8s-sync", add_help_option=False, context_settings={
        "allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
    def k8s_sync(ctx: typer.Context) -> None:
        """Sync Kubernetes Services and catalog services both ways (consul-k8s's sync-catalog); `purge` removes
        what it wrote. `proconsul k8s-sync --help` lists the flags."""
        from proconsul.k8s_sync.cli import execute

        raise typer.Exit(execute(list(ctx.args)))
