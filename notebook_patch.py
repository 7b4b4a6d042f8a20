"""Update the notebooks for the config/training API of branch arch-train (issue 12); run once, then delete.

    python notebook_patch.py REPO_ROOT

* code cells: exact string replacements in the cells' source; each old string must occur exactly
  once among the notebook's code cells (the script stops otherwise, before writing anything);
* recorded outputs of two ``# NBVAL_CHECK_OUTPUT`` cells whose printed text the new API changes
  (a ViTConfig prints as a dataclass; a checkpoint has the new layout): the output line that
  starts with the given text is replaced (exactly one such line must exist).

The notebooks are written back as nbformat writes them: json with indent=1, ensure_ascii=False,
and a trailing newline.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

NB03 = "notebooks/03_vit_patch_embedding.ipynb"
NB04 = "notebooks/04_training_vit_cifar10.ipynb"

SOURCE_REPLACEMENTS: dict[str, list[tuple[str, str]]] = {
    NB04: [
        # imports: the training settings are one TrainConfig
        ("""\
from minivit.train import (
    confusion_matrix, fit, load_checkpoint, load_pretrained_cifar_vit, misclassified, param_groups, predict,
    warmup_cosine,
)""", """\
from minivit.train import (
    TrainConfig, confusion_matrix, fit, load_checkpoint, load_pretrained_cifar_vit, misclassified, param_groups,
    predict, warmup_cosine,
)"""),
        # section 3: model.config is a ViTConfig dataclass; printed as the dict it was, the recorded output stays
        ("""\
print(f"vit_cifar_small: {sum(p.numel() for p in model.parameters()):,} parameters, config {model.config}")""", """\
print(f"vit_cifar_small: {sum(p.numel() for p in model.parameters()):,} parameters, "
      f"config {model.config.to_dict()}")"""),
        # section 4: fit(model, train_set, test_set, TrainConfig(...), augment=..., device=...)
        ("""\
vit_history = fit(vit, train_set, test_set, epochs=epochs, batch_size=batch_size, lr=2e-3, weight_decay=0.05,
                  warmup=min(1.0, epochs / 2), label_smoothing=0.1, grad_clip=1.0, augment=augment, device=device)""",
         """\
train_config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=2e-3, weight_decay=0.05,
                           warmup=min(1.0, epochs / 2), label_smoothing=0.1, grad_clip=1.0)
vit_history = fit(vit, train_set, test_set, train_config, augment=augment, device=device)"""),
        # section 6: the CNN with the ViT's settings
        ("""\
cnn_history = fit(cnn, train_set, test_set, epochs=epochs, batch_size=batch_size, lr=2e-3, weight_decay=0.05,
                  warmup=min(1.0, epochs / 2), label_smoothing=0.1, grad_clip=1.0, augment=augment, device=device)""",
         """\
cnn_history = fit(cnn, train_set, test_set, train_config, augment=augment, device=device)  # the ViT's settings"""),
        # section 7: exact resumption
        ("""\
recipe = dict(epochs=2, batch_size=128, lr=2e-3, warmup=0.5, progress=False, device="cpu")""", """\
recipe = TrainConfig(epochs=2, batch_size=128, lr=2e-3, warmup=0.5)
options = dict(progress=False, device="cpu")"""),
        ("""\
fit(uninterrupted, small_train, small_test, checkpoint_dir=f"{folder}/a", **recipe)""", """\
fit(uninterrupted, small_train, small_test, recipe, checkpoint_dir=f"{folder}/a", **options)"""),
        ("""\
fit(build_vit("vit_cifar_small", dropout=0.1), small_train, small_test, checkpoint_dir=f"{folder}/b",
    stop_after=1, **recipe)  # the session "dies" after epoch 1""", """\
fit(build_vit("vit_cifar_small", dropout=0.1), small_train, small_test, recipe, checkpoint_dir=f"{folder}/b",
    stop_after=1, **options)  # the session "dies" after epoch 1"""),
        ("""\
fit(resumed, small_train, small_test, checkpoint_dir=f"{folder}/b", **recipe)  # ... picks up at epoch 2""", """\
fit(resumed, small_train, small_test, recipe, checkpoint_dir=f"{folder}/b", **options)  # ... picks up at epoch 2"""),
        ("""\
print("checkpoint holds:", sorted(torch.load(f"{folder}/b/last.pt", weights_only=True)))""", """\
checkpoint = torch.load(f"{folder}/b/last.pt", weights_only=True)
print("checkpoint holds:", sorted(checkpoint))
print("its training state:", sorted(checkpoint["training"]))"""),
        # section 8: a recipe is a TrainConfig, a DataConfig, a model and a time budget
        ("""train_sizes(RECIPES["cpu"]["progressive"], 24, full_size=32)""",
         """train_sizes(RECIPES["cpu"].train.progressive, 24, full_size=32)"""),
    ],
}

OUTPUT_REPLACEMENTS: dict[str, list[tuple[str, list[str]]]] = {
    NB03: [("vit_cifar_small: {", [
        "vit_cifar_small: ViTConfig(image_size=32, patch_size=4, in_channels=3, num_classes=10, dim=128, depth=4, "
        "num_heads=4, mlp_dim=256, dropout=0.0, attn_dropout=0.0, pool='cls', pos_embed='learned', norm_eps=1e-06, "
        "dynamic_size=True)\n"])],
    NB04: [("checkpoint holds: ", [
        "checkpoint holds: ['architecture', 'config', 'format', 'meta', 'model', 'training']\n",
        "its training state: ['ema_n_averaged', 'model', 'optimizer', 'rng', 'scaler', 'scheduler']\n"])],
}


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def patch_sources(notebook: dict, replacements: list[tuple[str, str]], name: str) -> None:
    code_cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    for old, new in replacements:
        holders = [cell for cell in code_cells if old in "".join(cell["source"])]
        count = sum("".join(cell["source"]).count(old) for cell in holders)
        assert count == 1, f"{name}: expected the old string once among the code cells, found it {count} times:\n{old}"
        cell = holders[0]
        cell["source"] = _lines("".join(cell["source"]).replace(old, new))


def patch_outputs(notebook: dict, replacements: list[tuple[str, list[str]]], name: str) -> None:
    for start, new_lines in replacements:
        found = [(output, i) for cell in notebook["cells"] if cell["cell_type"] == "code"
                 for output in cell.get("outputs", []) if output.get("output_type") == "stream"
                 for i, line in enumerate(_lines("".join(output["text"]))) if line.startswith(start)]
        assert len(found) == 1, f"{name}: expected one output line starting with {start!r}, found {len(found)}"
        output, index = found[0]
        lines = _lines("".join(output["text"]))
        output["text"] = lines[:index] + new_lines + lines[index + 1:]


def main(root: Path) -> None:
    patched = {}
    for name in sorted(set(SOURCE_REPLACEMENTS) | set(OUTPUT_REPLACEMENTS)):
        path = root / name
        notebook = json.loads(path.read_text(encoding="utf-8"))
        patch_sources(notebook, SOURCE_REPLACEMENTS.get(name, []), name)
        patch_outputs(notebook, OUTPUT_REPLACEMENTS.get(name, []), name)
        patched[path] = notebook
    for path, notebook in patched.items():  # written only once every replacement was found
        path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"patched {path}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python notebook_patch.py REPO_ROOT")
    main(Path(sys.argv[1]))
