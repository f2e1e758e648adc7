"""A study's markdown: the caption that says what was measured, the table of finished cells, what is not done."""



from __future__ import annotations

from typing import Any

from model_zoo.registry import list_models
from model_zoo.training.config import SELECT_BY
from ssmbench.attacks import get_suite_spec
from ssmbench.leaderboard import ResultRow, read
from ssmbench.leaderboard_render import PREAMBLE, render_markdown
from ssmbench.study.config import StudyConfig
from ssmbench.study.grid import expand
from ssmbench.study.runner import DONE, finished_marker, recorded_cells, status

# -- the study's table ------------------------------------------------------------------------------


def study_rows(config: StudyConfig) -> list[ResultRow]:
    """The leaderboard rows that this study's finished cells recorded."""
    cells, _ = expand(config)
    recorded = recorded_cells(config)
    run_ids = set()
    for cell in cells:
        marker = finished_marker(config, cell, recorded)
        if marker is not None and marker["status"] == DONE:
            run_ids.add(marker["run_id"])
    if not run_ids or not config.leaderboard.is_file():
        return []
    return [row for row in read(config.leaderboard) if row.run_id in run_ids]


def caption(config: StudyConfig) -> str:
    """What the numbers were measured with: training budget, model, and every evaluation subset."""
    train, freeat = config.train_config("pgd", config.seeds[0]), config.train_config("freeat", config.seeds[0])
    replays = freeat.method_params.m  # type: ignore[attr-defined]  # FreeATParams
    train_set = f"the first {train.train_examples} training images" if train.train_examples else "the whole training split"
    eval_set = f"the first {train.eval_examples} test images" if train.eval_examples else "the whole test split"
    model = f"the {config.dataset} preset" + _overrides_text(config.model)
    selection_set = f"{train.val_examples} held-out training images (not trained on)" if train.val_examples else eval_set
    suites = []
    for suite in dict.fromkeys([*config.suites, *(name for grid in config.grids for name in grid.suites)]):
        if get_suite_spec(suite).uses_autoattack:
            suites.append(f"{suite} ({config.aa_version}, {config.backend} code) on the first {config.aa_examples} test images")
        else:
            suites.append(f"{suite} on {eval_set}")
        if any(suite not in (grid.suites or config.suites) for grid in config.grids):
            suites[-1] += " (in the cells whose grid lists it)"
    return (
        f"Trained {_count(train.epochs or 0, 'epoch')} (FreeAT {_count(freeat.effective_epochs, 'epoch')} x {replays} replays) on {train_set}, "
        f"batch {train.batch_size}, {train.optim.optimizer} lr {train.optim.lr:g} ({train.optim.schedule}), weight decay {train.optim.weight_decay:g}, "
        f"{_count(len(config.seeds), 'seed')} ({', '.join(map(str, config.seeds))}); model: {model}. "
        f"Best = the epoch with the {SELECT_BY[train.select_by]} on {selection_set}. Evaluated: {'; '.join(suites)}. "
        + ("Sanity checks on every evaluation." if config.checks else "Sanity checks off (checks = false): the rows say not checked.")
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _overrides_text(model: dict[str, Any]) -> str:
    """' with d_model = 64 (mamba: d_state = 16)' for the caption; '' without overrides."""
    shared = ", ".join(f"{key} = {value}" for key, value in sorted(model.items()) if key not in list_models())
    own = "; ".join(f"{arch}: {', '.join(f'{k} = {v}' for k, v in sorted(model[arch].items()))}"
                    for arch in sorted(set(model) & set(list_models())))
    text = f" with {shared}" if shared else ""
    return text + (f" ({own})" if own else "")


def render_study(config: StudyConfig) -> str:
    """Markdown: the caption, the paper-style table of the finished cells, then what is not done."""
    # The leaderboard's preamble explains the columns for the published file; the study has its own caption.
    tables = render_markdown(study_rows(config)).removeprefix(PREAMBLE).strip()
    legend = ("Accuracies in % with their 95% Wilson intervals; ≈: not significantly different from the line "
              "above (exact McNemar on per-example outcomes, else Fisher's exact test on the counts).")
    parts = [f"# Study: {config.title} ({config.dataset})", "", caption(config), legend, "", tables, ""]
    cells, skipped = expand(config)
    recorded = recorded_cells(config)
    unfinished = [s for s in (status(config, cell, recorded) for cell in cells) if s.status != DONE]
    if unfinished:
        parts += ["## Not finished", ""]
        parts += [f"- {s.cell.name}: {s.status}{f' ({s.message})' if s.message else ''}" for s in unfinished]
        parts.append("")
    if skipped:
        parts += ["## Skipped combinations", ""]
        parts += [f"- {s.cell.name}: {s.reason}" for s in skipped]
        parts.append("")
    return "\n".join(parts)
