"""The checkpoint directory, in one place: what it holds, how a run writes it, how it is read back.

A checkpoint (``RUN/best``, ``RUN/last``) is a directory written atomically (``io.atomic_directory``):

- ``elmrec_config.json``, ``model.safetensors``, ``graph.safetensors``, T5's ``config.json`` and the
  tokenizer: the model (``ELMRec.save_pretrained`` / ``from_pretrained``);
- ``run_config.json`` (the run's resolved configuration), ``dataset.json`` (name, sizes,
  fingerprint), ``histories.safetensors`` and ``datamaps.json`` (original ids): what inference
  needs without the dataset directory;
- ``training_state.pt`` (``last/`` only): optimizer, scheduler and early-stopping state (and with
  ``ema_decay`` the trained weights, the model files holding their average) for
  ``--resume``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as save_tensors

from .config import Config, config_from_dict
from .data import Dataset

MODEL_CONFIG_FILE, WEIGHTS_FILE, GRAPH_FILE = "elmrec_config.json", "model.safetensors", "graph.safetensors"
RUN_CONFIG_FILE, DATASET_FILE, HISTORIES_FILE = "run_config.json", "dataset.json", "histories.safetensors"
DATAMAPS_FILE, STATE_FILE = "datamaps.json", "training_state.pt"
# model fields added after checkpoints were first written, with the value those checkpoints were
# trained with (a field's default today may differ)
LEGACY_MODEL_FIELDS = {"id_tokens": "digits", "causal_history": False, "direct_loss": "items",
                       "sequential_user": True, "graph_head": False,
                       "last_item_start": False, "item_init": "random", "graph_init": "random",
                       "user_start": False, "hide_direct_edges": False}


def stored_model_config(fields: dict) -> dict:
    """A stored model configuration with the fields it predates filled in as it was trained."""
    return {**LEGACY_MODEL_FIELDS, **fields}


def run_files(dataset: Dataset, cfg: Config, training_state: dict | None = None) -> dict[str, str | bytes]:
    """What a checkpoint carries besides the model: run config, dataset identity, histories, id maps
    (so recommendations need no dataset directory) and, for ``last/``, the training state."""
    info = {**dataset.summary(), "source": dataset.name}
    files: dict[str, str | bytes] = {
        RUN_CONFIG_FILE: json.dumps(cfg.to_dict(), indent=2) + "\n",
        DATASET_FILE: json.dumps(info, indent=2) + "\n",
        HISTORIES_FILE: save_tensors({"offsets": torch.tensor(dataset.offsets), "items": torch.tensor(dataset.items)}),
    }
    if dataset.user_names and dataset.item_names:
        maps = {"id2user": {str(k): v for k, v in enumerate(dataset.user_names) if k},
                "id2item": {str(k): v for k, v in enumerate(dataset.item_names) if k}}
        files[DATAMAPS_FILE] = json.dumps(maps) + "\n"
    if training_state is not None:
        buf = io.BytesIO()
        torch.save(training_state, buf)
        files[STATE_FILE] = buf.getvalue()
    return files


def read_run_config(directory: str | Path) -> Config:
    raw = json.loads((Path(directory) / RUN_CONFIG_FILE).read_text())
    raw["model"] = stored_model_config(raw["model"])
    return config_from_dict(raw)


def read_fingerprint(directory: str | Path) -> str:
    return json.loads((Path(directory) / DATASET_FILE).read_text())["fingerprint"]


@dataclass
class RunData:
    """The dataset side of a checkpoint: histories, identity and original ids."""

    offsets: np.ndarray
    items: np.ndarray
    info: dict
    user_names: dict[int, str] | None
    item_names: dict[int, str] | None


def read_run_data(directory: str | Path) -> RunData:
    d = Path(directory)
    h = load_file(str(d / HISTORIES_FILE))
    users = items = None
    if (d / DATAMAPS_FILE).is_file():
        maps = json.loads((d / DATAMAPS_FILE).read_text())
        users = {int(k): v for k, v in maps["id2user"].items()}
        items = {int(k): v for k, v in maps["id2item"].items()}
    info = json.loads((d / DATASET_FILE).read_text())
    return RunData(h["offsets"].numpy(), h["items"].numpy(), info, users, items)


def read_training_state(directory: str | Path, device: torch.device) -> dict:
    path = Path(directory) / STATE_FILE
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError) as e:
        raise ValueError(f"{path}: damaged training state ({e}); cannot resume") from None
